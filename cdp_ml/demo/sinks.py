"""Append-only writers for the demo exports, so a block of persons is written and then forgotten."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
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
        path = self.directory / f"{key or self.name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = df.to_json(orient="records", lines=True, force_ascii=False, double_precision=6) if len(df) else ""
        if text and not text.endswith("\n"):
            text += "\n"
        with path.open("a", encoding="utf-8") as fh:
            fh.write(text)
            for line in extra_lines or ():
                fh.write(line + "\n")
        self.files.add(path)
        self.rows += len(df) + len(extra_lines or ())
