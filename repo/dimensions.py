"""The dimension universe, dataIds and their validation.

A dimension is a key of a dataId (``visit``, ``detector``, ``tract`` ...). Each has a value type,
the dimensions it *requires* (a ``patch`` number means nothing without its ``tract`` and ``skymap``)
and the dimensions it *implies* (a ``visit`` determines its ``physical_filter``, ``band`` and
``day_obs``). Implied values are not needed to identify a dataset; they are filled in from the
dimension records stored in the repository.

Dimension values become directory names in the lake (``band=r/visit=12``), so string values are
restricted to a safe character set and integer values to non-negative integers: nothing in a dataId
can climb out of the repository root or inject SQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .errors import InvalidDataIdError


@dataclass(frozen=True)
class Field:
    """One field of a dimension record: name, type ('int', 'float', 'str') and meaning."""

    name: str
    dtype: str
    doc: str


@dataclass(frozen=True)
class Dimension:
    """A dataId key: its value type, what it requires and implies, and its record fields."""

    name: str
    dtype: str  # 'int' or 'str'
    requires: tuple[str, ...]
    implies: tuple[str, ...]
    fields: tuple[Field, ...]
    doc: str

    @property
    def key_field(self) -> str | None:
        """The record field holding this dimension's own value (None for record-only tables)."""
        return {"int": "id", "str": "name"}.get(self.dtype)

    @property
    def record_keys(self) -> tuple[str, ...]:
        """Columns that identify a record: required dimensions, then the key."""
        return (*self.requires, self.key_field) if self.key_field else self.requires

    @property
    def record_columns(self) -> tuple[str, ...]:
        """Columns of a record: required dimensions, the key, implied dimensions, then fields."""
        return (*self.record_keys, *self.implies, *(f.name for f in self.fields))

    def record_dtype(self, column: str) -> str:
        """The value type of one record column."""
        if column == self.key_field:
            return self.dtype
        if column in self.requires or column in self.implies:
            return UNIVERSE[column].dtype
        for field in self.fields:
            if field.name == column:
                return field.dtype
        raise KeyError(column)


def _f(name: str, dtype: str, doc: str) -> Field:
    return Field(name, dtype, doc)


_REGION = _f("region", "str", "JSON list of [ra, dec] vertices of the footprint (deg)")

#: Every dimension, in the canonical order used for dataIds, paths and tables.
DIMENSIONS: tuple[Dimension, ...] = (
    Dimension(
        "instrument",
        "str",
        (),
        (),
        (_f("class_name", "str", "Python class implementing the instrument"),),
        "A camera.",
    ),
    Dimension(
        "skymap",
        "str",
        (),
        (),
        (
            _f("hash", "str", "sha256 of the sky map configuration"),
            _f("config", "str", "JSON sky map configuration"),
            _f("tract_count", "int", "number of tracts"),
        ),
        "A tessellation of the sky into tracts and patches.",
    ),
    Dimension(
        "tract",
        "int",
        ("skymap",),
        (),
        (
            _f("ra", "float", "tract centre right ascension (deg)"),
            _f("dec", "float", "tract centre declination (deg)"),
            _f("ring", "int", "declination ring (-1 and num_rings for the polar caps)"),
            _f("nx", "int", "width of the tract bounding box (pixels)"),
            _f("ny", "int", "height of the tract bounding box (pixels)"),
            _f("pixel_scale", "float", "pixel scale (arcsec)"),
            _REGION,
            _f("outer_region", "str", "JSON vertices of the region including the overlap"),
        ),
        "A region of the sky with its own projection.",
    ),
    Dimension(
        "patch",
        "int",
        ("skymap", "tract"),
        (),
        (
            _f("cell_x", "int", "patch column in the tract grid"),
            _f("cell_y", "int", "patch row in the tract grid"),
            _f("x0", "int", "first column of the patch (with border) in tract pixels"),
            _f("y0", "int", "first row of the patch (with border) in tract pixels"),
            _f("nx", "int", "patch width with border (pixels)"),
            _f("ny", "int", "patch height with border (pixels)"),
            _REGION,
            _f("outer_region", "str", "JSON vertices including the border"),
        ),
        "A cell of a tract's grid, the unit of co-addition.",
    ),
    Dimension("band", "str", (), (), (), "An abstract filter band (g, r, i ...)."),
    Dimension(
        "healpix7",
        "int",
        (),
        (),
        (),
        "A HEALPix pixel (nested, order 7: ~0.46 deg), the shard of a reference catalog.",
    ),
    Dimension(
        "physical_filter",
        "str",
        ("instrument",),
        ("band",),
        (),
        "A filter of one instrument; it belongs to a band.",
    ),
    Dimension(
        "day_obs",
        "int",
        ("instrument",),
        (),
        (),
        "The observing night, YYYYMMDD of its local-noon start.",
    ),
    Dimension(
        "visit",
        "int",
        ("instrument",),
        ("physical_filter", "band", "day_obs"),
        (
            _f("exposure_time", "float", "exposure time (s)"),
            _f("ra", "float", "boresight right ascension (deg)"),
            _f("dec", "float", "boresight declination (deg)"),
            _f("rotation_angle", "float", "sky rotation angle of the camera (deg)"),
            _f("datetime_begin", "str", "start of the exposure, ISO 8601 UTC"),
            _f("mjd", "float", "start of the exposure, MJD (UTC)"),
            _f("airmass", "float", "airmass at the start of the exposure"),
            _f("target", "str", "target or field name"),
            _f("observation_type", "str", "science, bias, dark or flat"),
            _REGION,
        ),
        "One exposure of the whole camera.",
    ),
    Dimension(
        "detector",
        "int",
        ("instrument",),
        (),
        (
            _f("name", "str", "detector name"),
            _f("nx", "int", "width of the science area (pixels)"),
            _f("ny", "int", "height of the science area (pixels)"),
            _f("focal_plane_x", "float", "detector centre on the focal plane (mm)"),
            _f("focal_plane_y", "float", "detector centre on the focal plane (mm)"),
            _f("orientation", "float", "rotation of the detector on the focal plane (deg)"),
            _f("pixel_size", "float", "pixel size (micron)"),
        ),
        "One sensor of a camera.",
    ),
)

UNIVERSE: dict[str, Dimension] = {d.name: d for d in DIMENSIONS}
DIMENSION_NAMES: tuple[str, ...] = tuple(d.name for d in DIMENSIONS)

#: Every table of records: the dimensions, plus record-only elements keyed by dimensions that
#: are not dataId keys themselves (the footprint of each detector in each visit, from its WCS).
ELEMENTS: dict[str, Dimension] = {
    **UNIVERSE,
    "visit_detector_region": Dimension(
        "visit_detector_region",
        "none",
        ("instrument", "visit", "detector"),
        (),
        (_REGION,),
        "The footprint of one detector in one visit (for sky-map overlaps).",
    ),
}

#: Dimensions that become hive partitions in paths, in this order.
PARTITION_ORDER: tuple[str, ...] = (
    "instrument",
    "skymap",
    "tract",
    "patch",
    "healpix7",
    "band",
    "visit",
    "detector",
)

MAX_VALUE_LENGTH = 64
_SAFE_STRING = re.compile(r"^[A-Za-z0-9_+\-][A-Za-z0-9_.+\-]{0,63}$")
MAX_INT_VALUE = 2**62


def sort_dimensions(names: Iterable[str]) -> tuple[str, ...]:
    """Return dimension names in canonical universe order; unknown names are an error."""
    names = set(names)
    unknown = names - UNIVERSE.keys()
    if unknown:
        raise InvalidDataIdError(
            f"unknown dimension(s) {sorted(unknown)}; known: {', '.join(DIMENSION_NAMES)}"
        )
    return tuple(n for n in DIMENSION_NAMES if n in names)


@dataclass(frozen=True)
class DimensionGroup:
    """A set of dimensions closed under 'requires', split into required and implied keys.

    ``required`` identify a dataset (they make its id and path); ``implied`` are determined by the
    required ones through dimension records (visit -> band).
    """

    required: tuple[str, ...]
    implied: tuple[str, ...]

    @classmethod
    def from_names(cls, names: Iterable[str]) -> DimensionGroup:
        """Expand the given dimensions with everything they require and imply."""
        names = set(sort_dimensions(names))
        stack = list(names)
        while stack:
            for dep in UNIVERSE[stack.pop()].requires:
                if dep not in names:
                    names.add(dep)
                    stack.append(dep)
        implied: set[str] = set()
        stack = list(names)
        while stack:
            for imp in UNIVERSE[stack.pop()].implies:
                if imp not in implied:
                    implied.add(imp)
                    stack.append(imp)
        # An implied dimension's own requirements (physical_filter -> instrument) are present
        # already, because everything that implies something requires the same instrument.
        names |= implied
        required = sort_dimensions(names - implied)
        return cls(required=required, implied=sort_dimensions(implied))

    @cached_property
    def names(self) -> tuple[str, ...]:
        """All dimensions, required and implied, in canonical order."""
        return sort_dimensions((*self.required, *self.implied))

    def __contains__(self, name: object) -> bool:
        return name in self.required or name in self.implied


def normalize_value(dimension: str, value: Any) -> int | str:
    """Check one dataId value and return it in its canonical type.

    Integers may be given as ``int`` (numpy integers too) or as strings of digits; strings must be
    1-64 characters of letters, digits and ``_ . + -``, not starting with ``.``.
    """
    dim = UNIVERSE.get(dimension)
    if dim is None:
        raise InvalidDataIdError(
            f"unknown dimension {dimension!r}; known: {', '.join(DIMENSION_NAMES)}"
        )
    if dim.dtype == "int":
        if isinstance(value, bool):
            raise InvalidDataIdError(f"{dimension}: expected an integer, got the boolean {value}")
        if isinstance(value, str):
            text = value.strip()
            if not re.fullmatch(r"[0-9]{1,19}", text):
                raise InvalidDataIdError(f"{dimension}: expected an integer, got {value!r:.80}")
            value = int(text)
        try:
            as_int = int(value)
        except (TypeError, ValueError):
            raise InvalidDataIdError(
                f"{dimension}: expected an integer, got {type(value).__name__} {value!r:.80}"
            ) from None
        if as_int != value:
            raise InvalidDataIdError(f"{dimension}: expected an integer, got {value!r:.80}")
        if not 0 <= as_int < MAX_INT_VALUE:
            raise InvalidDataIdError(f"{dimension}: {as_int} is out of range [0, 2**62)")
        return as_int
    if not isinstance(value, str):
        raise InvalidDataIdError(
            f"{dimension}: expected a string, got {type(value).__name__} {value!r:.80}"
        )
    if len(value) > MAX_VALUE_LENGTH:
        raise InvalidDataIdError(
            f"{dimension}: value is {len(value)} characters long; at most {MAX_VALUE_LENGTH} allowed"
        )
    if not _SAFE_STRING.fullmatch(value):
        raise InvalidDataIdError(
            f"{dimension}: {value!r} is not allowed; use letters, digits and '_.+-' "
            "(not starting with '.', no '/', spaces or control characters)"
        )
    return value


class DataId(Mapping[str, Any]):
    """An immutable, validated mapping of dimension name to value, in canonical order.

    ``required`` are the keys that identify a dataset; the mapping may hold implied keys as well.
    Two dataIds are equal when all their items are.
    """

    __slots__ = ("_items", "_hash")

    def __init__(self, values: Mapping[str, Any]):
        items = tuple((k, values[k]) for k in sort_dimensions(values.keys()))
        self._items = items
        self._hash = hash(items)

    @classmethod
    def from_ordered(cls, keys: Sequence[str], values: Sequence[Any]) -> DataId:
        """Build from keys already validated and in canonical order (fast path for queries)."""
        self = cls.__new__(cls)
        self._items = tuple((k, v) for k, v in zip(keys, values, strict=True) if v is not None)
        self._hash = hash(self._items)
        return self

    def __getitem__(self, key: str) -> Any:
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self):
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DataId):
            return self._items == other._items
        if isinstance(other, Mapping):
            return dict(self._items) == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k}: {v!r}" for k, v in self._items) + "}"

    def subset(self, names: Iterable[str]) -> DataId:
        """The dataId restricted to the given dimensions (those present)."""
        names = set(names)
        return DataId({k: v for k, v in self._items if k in names})

    def canonical(self) -> str:
        """A stable text form used for dataset ids: ``band=r,visit=12``."""
        return ",".join(f"{k}={v}" for k, v in self._items)


def validate_data_id(
    values: Mapping[str, Any], group: DimensionGroup, *, what: str = "dataId"
) -> DataId:
    """Check types, unknown keys and missing required keys of a dataId for ``group``.

    Implied keys may be present (they are checked for type) or missing (the repository fills them
    in from dimension records). Returns a :class:`DataId` of the given keys, normalized.
    """
    if not isinstance(values, Mapping):
        raise InvalidDataIdError(
            f"{what} must be a mapping of dimension to value, got {values!r:.80}"
        )
    allowed = set(group.names)
    normalized = {}
    for key, value in values.items():
        if key not in allowed:
            if key in UNIVERSE:
                raise InvalidDataIdError(
                    f"{what} {dict(values)}: key {key!r} is not a dimension of "
                    f"({', '.join(group.names) or 'no dimensions'})"
                )
            raise InvalidDataIdError(
                f"{what} {dict(values)}: unknown key {key!r}; known dimensions: "
                f"{', '.join(DIMENSION_NAMES)}"
            )
        normalized[key] = normalize_value(key, value)
    missing = [k for k in group.required if k not in normalized]
    if missing:
        raise InvalidDataIdError(
            f"{what} {dict(values)}: missing required key(s) {', '.join(missing)} "
            f"(required: {', '.join(group.required)})"
        )
    return DataId(normalized)
