"""The StructuredData storage class: JSON-compatible Python objects as UTF-8 JSON."""

from __future__ import annotations

import json
import math
from typing import Any

from ..errors import CorruptDatasetError, FormatterError


def _check_finite(obj: Any, where: str = "$") -> None:
    """JSON has no NaN or infinity; refuse them rather than write non-standard JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        raise FormatterError(f"StructuredData: {where} is {obj}, which JSON cannot hold")
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise FormatterError(f"StructuredData: {where} has a non-string key {key!r}")
            _check_finite(value, f"{where}.{key}")
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            _check_finite(value, f"{where}[{i}]")


def write_json(obj: Any) -> bytes:
    """Serialize a dict/list of JSON types; floats round-trip exactly (shortest repr)."""
    _check_finite(obj)
    try:
        return json.dumps(obj, indent=1, allow_nan=False, ensure_ascii=False).encode()
    except TypeError as exc:
        raise FormatterError(f"StructuredData must be JSON-serializable: {exc}") from exc


def read_json(data: bytes, source: str) -> Any:
    """Parse JSON bytes; corrupt content names ``source``."""
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptDatasetError(f"{source}: not valid JSON ({exc})") from exc
