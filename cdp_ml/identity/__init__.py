"""Identity stage: identifiers from every source resolved into persons with stable, random ids.

``resolve(ws, as_of)`` writes person_map, person_redirects, identity_edges, profiles and the person_*
views; ``evaluate(ws, truth, demo)`` measures the result against labelled truth. Imported lazily because
``cdp_ml.workspace`` imports this package's settings.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["EvaluationResult", "ResolveResult", "evaluate", "resolve"]
_HOMES = {"resolve": "resolution", "ResolveResult": "resolution", "evaluate": "evaluation",
          "EvaluationResult": "evaluation"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"cdp_ml.identity.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'cdp_ml.identity' has no attribute {name!r}")
