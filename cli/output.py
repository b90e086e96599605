"""Printing rows for the CLI as an aligned table, CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

FORMATS = ("table", "csv", "json")
#: Widest cell of the table format; longer values (a region's vertices) are shortened.
MAX_CELL = 48


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def format_rows(
    rows: Sequence[Mapping[str, Any]], fmt: str, columns: Sequence[str] | None = None
) -> str:
    """Render rows (dicts) in one of :data:`FORMATS`; ``columns`` fixes the column order.

    The table shortens values longer than :data:`MAX_CELL` characters (and says so); CSV and
    JSON give every value whole.
    """
    if columns is None:
        columns = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
    if fmt == "json":
        return json.dumps([{c: _json_value(row.get(c)) for c in columns} for row in rows], indent=1)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
        return buffer.getvalue().rstrip("\n")
    if not rows:
        return "(no rows)"
    cells = [[("" if row.get(c) is None else str(row.get(c))) for c in columns] for row in rows]
    shortened = any(len(v) > MAX_CELL for r in cells for v in r)
    if shortened:
        cells = [[v if len(v) <= MAX_CELL else v[: MAX_CELL - 3] + "..." for v in r] for r in cells]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    if shortened:
        lines.append(f"(values over {MAX_CELL} characters shortened; --format json shows them)")
    return "\n".join(line.rstrip() for line in lines)
