"""Append-only writers for the demo exports, so a block of persons is written and then forgotten."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq


def _as_text_table(df: pd.DataFrame) -> pa.Table:
    """Every column as text (nulls stay empty), so the CSV schema is the same for every block."""
    arrays = []
    for name in df.columns:
        col = df[name]
        arr = pa.array(col.to_numpy(dtype=object), from_pandas=True) if col.dtype == object or str(col.dtype) == "str" \
            else pa.Array.from_pandas(col)
        arrays.append(arr.cast(pa.string()) if arr.type != pa.string() else arr)
    return pa.Table.from_arrays(arrays, names=list(df.columns))


class CsvSink:
    """A CSV export written block by block with one header."""

    def __init__(self, path: Path, delimiter: str = ","):
        self.path = path
        self.delimiter = delimiter
        self.rows = 0
        self._writer: pacsv.CSVWriter | None = None

    def write(self, df: pd.DataFrame) -> None:
        table = _as_text_table(df)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            options = pacsv.WriteOptions(delimiter=self.delimiter, quoting_style="needed")
            self._writer = pacsv.CSVWriter(str(self.path), table.schema, write_options=options)
        self._writer.write_table(table)
        self.rows += len(df)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class ParquetSink:
    """A Parquet export; one row group per block, schema fixed by the first block."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path = path
        self.schema = schema
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None

    def write(self, df: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(df, schema=self.schema, preserve_index=False)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(str(self.path), self.schema, compression="zstd")
        self._writer.write_table(table)
        self.rows += len(df)

    def close(self) -> None:
        if self._writer is None:  # an empty export still has its columns
            pq.write_table(self.schema.empty_table(), str(self.path), compression="zstd")
        else:
            self._writer.close()


class JsonlSink:
    """Newline-delimited JSON, optionally split into one file per key (e.g. month)."""

    def __init__(self, directory: Path, name: str | None = None):
        self.directory = directory
        self.name = name
        self.rows = 0
        self.files: set[Path] = set()

    def write(self, df: pd.DataFrame, key: str | None = None, extra_lines: list[str] | None = None) -> None:
        text = df.to_json(orient="records", lines=True, force_ascii=False, double_precision=6) if len(df) else ""
        if text and not text.endswith("\n"):
            text += "\n"
        self.append_text(text, key, len(df), extra_lines)

    def append_text(self, text: str | bytes | memoryview, key: str | None, rows: int,
                    extra_lines: list[str] | None = None) -> None:
        """Append already serialised lines and optional raw extra lines (e.g. malformed ones)."""
        path = self.directory / f"{key or self.name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as fh:
            fh.write(text.encode("utf-8") if isinstance(text, str) else text)
            for line in extra_lines or ():
                fh.write((line + "\n").encode("utf-8"))
        self.files.add(path)
        self.rows += rows + len(extra_lines or ())


def json_lines(columns: list[tuple[str, pa.Array]]) -> pa.Array:
    """Serialise Arrow columns to one JSON object per row (each ending in a newline), in C++ kernels.

    Dictionary columns must come from ``json_dictionary`` (escaped once per distinct value); plain string columns must already be JSON-safe
    (generated text such as timestamps); numbers are written as numbers, nulls as null.
    """
    parts: list = []
    for i, (name, arr) in enumerate(columns):
        parts.append(("{" if i == 0 else ",") + json.dumps(name) + ":")
        if pa.types.is_dictionary(arr.type):  # dictionary already JSON-encoded by json_dictionary
            text = pc.take(arr.dictionary, arr.indices)
        elif pa.types.is_string(arr.type):
            text = pc.binary_join_element_wise('"', arr, '"', "")
        else:
            text = pc.cast(arr, pa.string())
        parts.append(pc.fill_null(text, "null"))
    parts.append("}\n")
    return pc.binary_join_element_wise(*parts, "")


def text_bytes(lines: pa.Array) -> memoryview:
    """The concatenated bytes of a string array without nulls (its data buffer between the offsets)."""
    _, offsets, data = lines.buffers()
    off = np.frombuffer(offsets, dtype=np.int32, count=len(lines) + 1, offset=4 * lines.offset)
    return memoryview(data)[off[0]:off[-1]] if data is not None else memoryview(b"")


def json_dictionary(arr: pa.DictionaryArray) -> pa.DictionaryArray:
    """The same column with each distinct value JSON-encoded once, for ``json_lines``."""
    quoted = pa.array([json.dumps(v, ensure_ascii=False) for v in arr.dictionary.to_pylist()], pa.string())
    return pa.DictionaryArray.from_arrays(arr.indices, quoted)
