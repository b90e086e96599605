"""Deciding, while the quantum graph is built, whether a dataId may be selected by a
where-expression that is evaluated on everything known about it (dimensions, record fields,
tracts and patches overlapped); see :func:`stages.framework.graph.build_graph`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from repo.dimensions import UNIVERSE
from repo.repository import Repository
from repo.where import Column, Not, compile_where, evaluate_where, parse_where
from repo.where import referenced_identifiers as where_identifiers

from .base import SKYMAP_DIMENSIONS
from .overlaps import RegionOverlaps


def where_columns() -> dict[str, Column]:
    """Every identifier a pipeline where-expression may use: dimensions and record fields."""
    columns = {name: Column(f'"{name}"', dim.dtype) for name, dim in UNIVERSE.items()}
    for element, dim in UNIVERSE.items():
        for f in dim.fields:
            columns[f"{element}.{f.name}"] = Column(f'"{element}"."{f.name}"', f.dtype)
    return columns


class WhereFilter:
    """Decide whether a dataId may be selected by a where-expression (see the module notes).

    Parameters
    ----------
    texts
        Expressions that must all hold (the run's and a stage's own); empty ones are ignored.
    binds
        Values of ``:name`` placeholders.
    repo
        Where record fields (``visit.exposure_time``) come from.
    overlaps
        A callable returning the :class:`RegionOverlaps` (created on first use), for
        expressions about tracts and patches of datasets that have a visit; and the sky map name.
    """

    def __init__(
        self,
        texts: Sequence[str],
        binds: Mapping[str, Any] | None,
        repo: Repository,
        overlaps: Callable[[], tuple[RegionOverlaps, str]] | None,
    ):
        self.nodes = [node for node in (parse_where(t) for t in texts if t) if node is not None]
        columns = where_columns()
        for node in self.nodes:
            compile_where(node, columns, binds)  # unknown identifiers, binds and types
        self.negations = [Not(node) for node in self.nodes]
        self.binds = binds
        self.repo = repo
        self.overlaps = overlaps
        names: set[str] = set()
        for node in self.nodes:
            names |= where_identifiers(node)
        self.dimensions = sorted(n for n in names if "." not in n)
        self.fields = sorted(n for n in names if "." in n)
        self.spatial = any(n.split(".")[0] in SKYMAP_DIMENSIONS for n in names)
        self._cache: dict[tuple, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.nodes)

    def accepts(self, data_id: Mapping[str, Any]) -> bool:
        """False only if the expression is definitely false for every row the dataId makes."""
        if not self.nodes:
            return True
        key = tuple(data_id.get(n) for n in _CACHE_KEYS)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = any(self._possible(row) for row in self._rows(data_id))
        return cached

    def _possible(self, row: Mapping[str, Any]) -> bool:
        for node, negation in zip(self.nodes, self.negations, strict=True):
            if not (
                evaluate_where(node, row, self.binds)
                or not evaluate_where(negation, row, self.binds)
            ):
                return False
        return True

    def _rows(self, data_id: Mapping[str, Any]) -> Iterable[dict[str, Any]]:
        base = {name: data_id.get(name) for name in self.dimensions}
        expansions: list[dict[str, Any]] = [{}]
        has_sky = any(data_id.get(n) is not None for n in ("tract", "patch"))
        if self.spatial and not has_sky and self.overlaps is not None and "visit" in data_id:
            overlaps, skymap = self.overlaps()
            pairs = overlaps.patches(data_id)
            expansions = [{"skymap": skymap, "tract": t, "patch": p} for t, p in pairs] or [
                {"skymap": skymap, "tract": None, "patch": None}
            ]
        for extra in expansions:
            row = {**base, **{k: v for k, v in extra.items() if k in base}}
            values = {**data_id, **extra}
            for name in self.fields:
                element, _, field_name = name.partition(".")
                record = self._record(element, values)
                row[name] = None if record is None else record.get(field_name)
            yield row

    def _record(self, element: str, values: Mapping[str, Any]) -> dict[str, Any] | None:
        keys = (*UNIVERSE[element].requires, element)
        if any(values.get(k) is None for k in keys):
            return None
        return self.repo.registry.get_record(element, values)


_CACHE_KEYS = tuple(UNIVERSE)
