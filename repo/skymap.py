"""The sky map: tracts and patches that tile the whole sphere, after Rubin's ``RingsSkyMap``.

Geometry
--------
The sphere is cut into ``num_rings`` declination rings of equal height ``h = 180 / (num_rings + 1)``
deg plus two polar caps of radius ``h / 2``: the south cap is ``dec < -90 + h/2``, ring ``i`` is
``-90 + (i + 1/2) h <= dec < -90 + (i + 3/2) h`` and the north cap is ``dec >= 90 - h/2``. Ring
``i`` is cut in RA into ``n_i = int(360 cos(d) / h) + 1`` equal slices, ``d`` being the ring's
declination nearest the equator, so that tracts are about ``h`` wide everywhere. Tract ids count
from the south cap (0) through the rings in order of increasing declination, each ring from its
slice centred on ``ra_start_deg`` eastwards, to the north cap (``num_tracts - 1``). The ``ring`` of
a tract is -1 for the south cap and ``num_rings`` for the north cap.

The *inner region* of a tract is the part of the sky it owns: an RA/Dec box (slice ``j`` of a ring
covers ``ra_start + (j - 1/2) w <= ra < ra_start + (j + 1/2) w``, ``w = 360 / n_i``) or a cap. Every
point of the sphere lies in exactly one inner region. Because parallels are not great circles, these
boxes are not spherical polygons, so ``find_tract`` never tests polygons: it finds the ring by a
binary search of the declination edges and the slice by arithmetic on RA, which is exact (a point
within ~1e-13 deg of an RA edge goes to whichever side the floating-point arithmetic gives, always
the same one).

The ``inner_region`` polygon given for a tract (and stored in its dimension record) is a *convex
cover* of the box: a box edge along a parallel bulging away from the box interior
(the equatorward edge of a box, and the edge of a cap) is followed by a chain of great-circle chords
tangent to the parallel from outside, with vertices at most ``INNER_REGION_TOLERANCE_ARCSEC`` beyond
it; an edge along a parallel that curves into the box (the poleward edge) is replaced by the single
great-circle chord through its corners, which lies outside the box by up to ~27 arcsec at |dec| = 60
and ~2.6 arcmin in the rings next to the caps (for 120 rings). The polygon therefore contains the
box; neighbouring inner polygons overlap by those slivers. Use ``find_tract`` for ownership.

Each tract has a gnomonic (TAN) WCS centred on the tract centre (the middle of its ring in Dec, the
middle of its slice in RA; the pole for a cap), north up and east left, with pixel centres at
integer 0-based coordinates. Its bounding box starts at pixel (0, 0) and covers the inner region
grown by ``tract_overlap_deg`` on every side (by at least that much on the sky), rounded up to a
whole number of patches. The *outer region* is the sky footprint of that box; as TAN maps great
circles to straight lines, the four-vertex outer polygon is exact. All tracts of a ring share one
shape, so the sky map computes a ring's geometry once and rotates it in RA.

The bounding box is tiled by ``nx x ny`` patches of ``patch_inner_dimensions`` pixels (their inner
boxes); a patch's outer box is its inner box grown by ``patch_border`` pixels and clipped to the
tract's box, as in Rubin's sky maps. Patch ids are ``y * nx + x``. Patch regions are exact
four-vertex polygons.

Presets
-------
* ``SkyMapConfig()`` (``drp_rings_v1``): 120 rings as Rubin's (tracts of ~1.49 deg), 1 arcmin
  overlap, 0.2 arcsec pixels and 2000-pixel (6.7 arcmin) patches with a 100-pixel border: about
  27,500 pixels and 14 x 14 = 196 patches per tract, 18,938 tracts. Patches of 2200 x 2200 pixels
  keep a co-add plane near 20 MB for our small simulated survey on small machines.
* ``SkyMapConfig.lsst_like()``: the same rings with Rubin-sized 4000-pixel patches (7 x 7 per
  tract).
* ``SkyMapConfig.test()``: 15 rings of 11.25 deg, coarse 60 arcsec pixels and 100-pixel patches:
  363 tracts of about 700 x 800 pixels, for fast tests.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from astropy.wcs import WCS
from numpy.typing import ArrayLike, NDArray

from .dimensions import normalize_value
from .errors import DimensionRecordError, InvalidDataIdError
from .regions import (
    Circle,
    ConvexPolygon,
    Region,
    as_radec_arrays,
    radec_to_xyz,
)

#: Largest distance (arcsec) by which the vertices approximating a parallel in an inner-region
#: polygon lie outside the parallel.
INNER_REGION_TOLERANCE_ARCSEC = 1.0

_TRACT_CACHE_SIZE = 256
_SUPPORTED_PROJECTIONS = ("TAN",)


# -- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SkyMapConfig:
    """Configuration of a ``RingsSkyMap``; its ``hash`` identifies the tessellation.

    Attributes
    ----------
    name : str
        Name of the sky map, the value of the ``skymap`` dimension.
    num_rings : int
        Number of declination rings between the polar caps.
    tract_overlap_deg : float
        Minimum extent of a tract's bounding box beyond its inner region, on every side (deg).
    pixel_scale_arcsec : float
        Pixel scale at the tract centre (arcsec per pixel).
    patch_inner_dimensions : tuple of int
        ``(nx, ny)`` size of a patch's inner box in pixels.
    patch_border : int
        Pixels by which a patch's outer box extends its inner box on each side.
    projection : str
        WCS projection code; only ``"TAN"`` is supported (patch edges are then great circles).
    ra_start_deg : float
        RA of the centre of the first tract of every ring.
    """

    name: str = "drp_rings_v1"
    num_rings: int = 120
    tract_overlap_deg: float = 1.0 / 60.0
    pixel_scale_arcsec: float = 0.2
    patch_inner_dimensions: tuple[int, int] = (2000, 2000)
    patch_border: int = 100
    projection: str = "TAN"
    ra_start_deg: float = 0.0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "name", normalize_value("skymap", self.name))
        set_(self, "num_rings", _int_field("num_rings", self.num_rings, 1, 2000))
        set_(self, "patch_border", _int_field("patch_border", self.patch_border, 0, 10**6))
        dims = self.patch_inner_dimensions
        if isinstance(dims, str | bytes) or not hasattr(dims, "__len__") or len(dims) != 2:
            raise DimensionRecordError(
                f"sky map {self.name!r}: patch_inner_dimensions must be (nx, ny), got {dims!r}"
            )
        set_(
            self,
            "patch_inner_dimensions",
            tuple(_int_field("patch_inner_dimensions", d, 1, 10**6) for d in dims),
        )
        scale = _float_field("pixel_scale_arcsec", self.pixel_scale_arcsec)
        if scale <= 0:
            raise DimensionRecordError(f"pixel_scale_arcsec must be positive, got {scale!r}")
        set_(self, "pixel_scale_arcsec", scale)
        ring_height = 180.0 / (self.num_rings + 1)
        overlap = _float_field("tract_overlap_deg", self.tract_overlap_deg)
        if not 0.0 <= overlap <= ring_height:
            raise DimensionRecordError(
                f"tract_overlap_deg must be in [0, {ring_height:.6g}] (the ring height), "
                f"got {overlap!r}"
            )
        set_(self, "tract_overlap_deg", overlap)
        ra_start = _float_field("ra_start_deg", self.ra_start_deg)
        if not 0.0 <= ra_start < 360.0:
            raise DimensionRecordError(f"ra_start_deg must be in [0, 360), got {ra_start!r}")
        set_(self, "ra_start_deg", ra_start)
        if self.projection not in _SUPPORTED_PROJECTIONS:
            raise DimensionRecordError(
                f"sky map projection {self.projection!r} is not supported "
                f"(supported: {', '.join(_SUPPORTED_PROJECTIONS)})"
            )

    @classmethod
    def lsst_like(cls, name: str = "lsst_rings_v1") -> SkyMapConfig:
        """Rubin-like: 120 rings, 1 arcmin overlap, 0.2"/px, 4000-px patches, 100-px border."""
        return cls(name=name, patch_inner_dimensions=(4000, 4000))

    @classmethod
    def test(cls, name: str = "test_rings") -> SkyMapConfig:
        """A coarse sky map for fast tests: 15 rings, 60"/px, 100-px patches, 5-px border."""
        return cls(
            name=name,
            num_rings=15,
            tract_overlap_deg=0.5,
            pixel_scale_arcsec=60.0,
            patch_inner_dimensions=(100, 100),
            patch_border=5,
        )

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-compatible dict."""
        data = asdict(self)
        data["patch_inner_dimensions"] = list(self.patch_inner_dimensions)
        return data

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no spaces. The input of ``hash``."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SkyMapConfig:
        """Configuration from ``to_dict`` output; missing keys take their defaults.

        Raises
        ------
        DimensionRecordError
            On unknown keys or invalid values.
        """
        if not isinstance(data, Mapping):
            raise DimensionRecordError(
                f"sky map config must be a mapping, got {type(data).__name__}"
            )
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise DimensionRecordError(f"unknown sky map config key(s): {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> SkyMapConfig:
        """Configuration from ``to_json`` output."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as err:
            raise DimensionRecordError(f"sky map config is not valid JSON: {err}") from None
        return cls.from_dict(data)

    @property
    def hash(self) -> str:
        """SHA-256 hex digest of the canonical JSON; equal for equal tessellations."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @property
    def ring_height_deg(self) -> float:
        """Height of a declination ring (deg); the polar caps have half this radius."""
        return 180.0 / (self.num_rings + 1)


def _int_field(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise DimensionRecordError(f"sky map config {name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise DimensionRecordError(f"sky map config {name} must be in [{lo}, {hi}], got {value}")
    return int(value)


def _float_field(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise DimensionRecordError(f"sky map config {name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise DimensionRecordError(f"sky map config {name} must be finite, got {value!r}")
    return float(value)


# -- tract and patch descriptions -------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TractInfo:
    """A tract: its place on the sky, its WCS and its patch grid.

    Attributes
    ----------
    id : int
        Tract id.
    ring : int
        Declination ring; -1 for the south cap, ``num_rings`` for the north cap.
    center : tuple of float
        (ra, dec) of the tract centre, the WCS reference point (deg).
    wcs : astropy.wcs.WCS
        Gnomonic WCS; 0-based pixel (0, 0) is the centre of the first pixel of the bounding box.
    bbox : tuple of int
        ``(nx, ny)`` size of the bounding box in pixels; it starts at (0, 0).
    num_patches : tuple of int
        ``(nx, ny)`` number of patches along each axis.
    inner_region : ConvexPolygon
        Convex polygon containing the inner box (see the module notes on its excess).
    outer_region : ConvexPolygon
        Exact sky footprint of the bounding box.
    dec_range : tuple of float
        Inner box declinations ``[lo, hi)`` (deg); the north cap includes dec = 90.
    ra_range : tuple of float or None
        Inner box RA ``[start, end)`` going east (deg, start > end when it crosses RA = 0);
        None for the polar caps, which own all RAs.
    pixel_scale_arcsec : float
        Pixel scale at the tract centre.
    """

    id: int
    ring: int
    center: tuple[float, float]
    wcs: WCS = field(repr=False)
    bbox: tuple[int, int]
    num_patches: tuple[int, int]
    inner_region: ConvexPolygon = field(repr=False)
    outer_region: ConvexPolygon = field(repr=False)
    dec_range: tuple[float, float]
    ra_range: tuple[float, float] | None
    pixel_scale_arcsec: float


@dataclass(frozen=True, eq=False)
class PatchInfo:
    """A patch of a tract.

    Attributes
    ----------
    tract, id : int
        Tract and patch ids (``id = index[1] * num_patches[0] + index[0]``).
    index : tuple of int
        ``(x, y)`` position in the tract's patch grid.
    bbox : tuple of int
        Outer box ``(x0, y0, nx, ny)`` in tract pixels, border included, clipped to the tract.
    inner_bbox : tuple of int
        Inner box ``(x0, y0, nx, ny)`` in tract pixels.
    wcs : astropy.wcs.WCS
        The tract WCS shifted so that patch pixel (0, 0) is tract pixel ``(x0, y0)`` of ``bbox``.
    inner_region, outer_region : ConvexPolygon
        Exact sky footprints of the inner and outer boxes.
    """

    tract: int
    id: int
    index: tuple[int, int]
    bbox: tuple[int, int, int, int]
    inner_bbox: tuple[int, int, int, int]
    wcs: WCS = field(repr=False)
    inner_region: ConvexPolygon = field(repr=False)
    outer_region: ConvexPolygon = field(repr=False)


# -- per-ring geometry, shared by all the tracts of a ring ------------------------------------


@dataclass(frozen=True, eq=False)
class _Ring:
    """Geometry of every tract of one ring (or cap) in a frame where the tract centre has RA 0.

    Vertex RAs are offsets from the tract centre; a tract's vertices are these rotated by its
    centre RA.
    """

    ring: int
    first_tract: int
    num_tracts: int
    dec_lo: float
    dec_hi: float
    dec_center: float
    wcs: WCS
    bbox: tuple[int, int]
    num_patches: tuple[int, int]
    inner_ra: NDArray[np.float64]
    inner_dec: NDArray[np.float64]
    outer_ra: NDArray[np.float64]
    outer_dec: NDArray[np.float64]
    outer_dec_range: tuple[float, float]
    outer_ra_halfwidth: float

    @property
    def is_cap(self) -> bool:
        return self.num_tracts == 1


@dataclass(frozen=True, eq=False)
class _PatchGrid:
    """Boxes and corner positions (offset RA, Dec) of every patch of a ring's tracts."""

    bbox: NDArray[np.int64]  # (P, 4) x0, y0, nx, ny of the outer boxes
    inner_bbox: NDArray[np.int64]  # (P, 4)
    outer_ra: NDArray[np.float64]  # (P, 4) counter-clockwise corners
    outer_dec: NDArray[np.float64]
    inner_ra: NDArray[np.float64]
    inner_dec: NDArray[np.float64]


def _wrap180(ra: NDArray[np.float64]) -> NDArray[np.float64]:
    return (np.asarray(ra) + 180.0) % 360.0 - 180.0


def _rotate_ra(offset: NDArray[np.float64], center_ra: float) -> NDArray[np.float64]:
    ra = (offset + center_ra) % 360.0
    return np.where(ra >= 360.0, 0.0, ra)


def _make_wcs(
    ra: float, dec: float, scale_deg: float, crpix0: tuple[float, float], shape: tuple[int, int]
) -> WCS:
    """Gnomonic WCS centred on (ra, dec), north up, east left; ``crpix0`` is 0-based."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.radesys = "ICRS"
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [crpix0[0] + 1.0, crpix0[1] + 1.0]
    wcs.wcs.cd = [[-scale_deg, 0.0], [0.0, scale_deg]]
    wcs.wcs.lonpole = 180.0
    wcs.wcs.set()
    wcs.pixel_shape = shape
    return wcs


def _tangent_chain_dec(dec: float, half_step_deg: float) -> float:
    """Declination of vertices whose great-circle chords just touch the parallel ``dec``.

    A chord between two points at declination ``d`` spanning ``2 * half_step`` in RA reaches
    ``atan(tan(d) / cos(half_step))`` at its middle; solving for that to equal ``dec`` puts the
    chord tangent to the parallel, on its equatorward side.
    """
    return math.degrees(
        math.atan(math.tan(math.radians(dec)) * math.cos(math.radians(half_step_deg)))
    )


def _chain_segments(dec: float, width_deg: float, minimum: int) -> int:
    """A number of chords (near the fewest) spanning ``width_deg`` of the parallel ``dec`` whose
    vertices stay within the tolerance of it."""
    tolerance = INNER_REGION_TOLERANCE_ARCSEC / 3600.0
    count = minimum
    while count < 4096:
        if abs(dec - _tangent_chain_dec(dec, width_deg / (2 * count))) <= tolerance:
            return count
        count = max(count + 1, int(count * 1.25))
    return count


def _inner_polygon(dec_lo: float, dec_hi: float, width: float, cap: bool) -> ConvexPolygon:
    """Convex polygon containing a ring box (RA offsets within ±width/2) or a polar cap."""
    if cap:
        edge = dec_hi if dec_hi < 0 else dec_lo
        count = _chain_segments(edge, 360.0, 8)
        ra = np.arange(count) * (360.0 / count)
        dec = np.full(count, _tangent_chain_dec(edge, 180.0 / count))
        return ConvexPolygon.from_radec(ra, dec)
    half = width / 2.0
    if dec_lo >= 0.0:  # northern box: the lower edge bulges out of the box
        count = _chain_segments(dec_lo, width, 1)
        low_ra = np.linspace(-half, half, count + 1)
        low_dec = np.full(count + 1, _tangent_chain_dec(dec_lo, half / count))
    else:
        low_ra, low_dec = np.array([-half, half]), np.array([dec_lo, dec_lo])
    if dec_hi <= 0.0:  # southern box: the upper edge bulges out of the box
        count = _chain_segments(dec_hi, width, 1)
        high_ra = np.linspace(half, -half, count + 1)
        high_dec = np.full(count + 1, _tangent_chain_dec(dec_hi, half / count))
    else:
        high_ra, high_dec = np.array([half, -half]), np.array([dec_hi, dec_hi])
    return ConvexPolygon.from_radec(
        np.concatenate([low_ra, high_ra]), np.concatenate([low_dec, high_dec])
    )


def _box_boundary_samples(
    dec_lo: float, dec_hi: float, width: float, cap: bool
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Points on the boundary of a ring box or cap, including its extremes in a centred TAN WCS.

    In TAN, meridians are straight, so x is extreme at the box corners and y at the corners or
    the middle of a parallel (RA offset 0); a cap's circle is extreme at RA 0, 90, 180, 270.
    """
    if cap:
        edge = dec_hi if dec_hi < 0 else dec_lo
        ra = np.arange(360.0)
        return ra, np.full(ra.size, edge)
    along = np.linspace(-width / 2.0, width / 2.0, 65)
    up = np.linspace(dec_lo, dec_hi, 17)
    ra = np.concatenate(
        [along, along, np.full(up.size, -width / 2.0), np.full(up.size, width / 2.0)]
    )
    dec = np.concatenate([np.full(along.size, dec_lo), np.full(along.size, dec_hi), up, up])
    return ra, dec


def _ccw_box_corners(
    x0: NDArray, y0: NDArray, nx: NDArray, ny: NDArray
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Outer pixel corners (..., 4) of boxes, in the order lower-left, lower-right, upper-right,
    upper-left of the pixel grid."""
    lo_x, hi_x = x0 - 0.5, x0 + nx - 0.5
    lo_y, hi_y = y0 - 0.5, y0 + ny - 0.5
    return (
        np.stack([lo_x, hi_x, hi_x, lo_x], axis=-1).astype(float),
        np.stack([lo_y, lo_y, hi_y, hi_y], axis=-1).astype(float),
    )


# -- the sky map ------------------------------------------------------------------------------


class RingsSkyMap:
    """Tracts in declination rings plus two polar caps, each tract tiled by patches.

    Parameters
    ----------
    config : SkyMapConfig
        The tessellation; see the module notes for the geometry.
    """

    def __init__(self, config: SkyMapConfig):
        if not isinstance(config, SkyMapConfig):
            raise DimensionRecordError(
                f"RingsSkyMap needs a SkyMapConfig, got {type(config).__name__}"
            )
        self.config = config
        height = config.ring_height_deg
        n = config.num_rings
        #: Declination edges: south cap below edges[0], ring i in [edges[i], edges[i+1]),
        #: north cap from edges[n].
        self._dec_edges = -90.0 + height * (np.arange(n + 1) + 0.5)
        near_equator = np.where(
            (self._dec_edges[:-1] < 0) & (self._dec_edges[1:] > 0),
            0.0,
            np.minimum(np.abs(self._dec_edges[:-1]), np.abs(self._dec_edges[1:])),
        )
        self._ring_counts = (360.0 * np.cos(np.radians(near_equator)) / height).astype(np.int64) + 1
        self._ring_first = 1 + np.concatenate([[0], np.cumsum(self._ring_counts)[:-1]])
        self.num_tracts = int(self._ring_counts.sum()) + 2
        self._rings: dict[int, _Ring] = {}
        self._patch_grids: dict[int, _PatchGrid] = {}
        self._tracts: OrderedDict[int, TractInfo] = OrderedDict()
        self._ring_filter: tuple[NDArray, NDArray, NDArray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Ship only the configuration (to Dask workers, say); caches are rebuilt on demand.
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"])

    @property
    def name(self) -> str:
        """The sky map name (the ``skymap`` dimension value)."""
        return self.config.name

    def __repr__(self) -> str:
        return f"RingsSkyMap({self.config.name!r}, num_tracts={self.num_tracts})"

    # -- ids --------------------------------------------------------------------------------

    def _check_tract_id(self, tract_id: Any) -> int:
        value = normalize_value("tract", tract_id)
        if value >= self.num_tracts:
            raise InvalidDataIdError(
                f"tract {value} is not in sky map {self.name!r} (tracts 0..{self.num_tracts - 1})"
            )
        return value

    def _ring_and_slice(self, tract_id: int) -> tuple[int, int]:
        if tract_id == 0:
            return -1, 0
        if tract_id == self.num_tracts - 1:
            return self.config.num_rings, 0
        ring = int(np.searchsorted(self._ring_first, tract_id, side="right")) - 1
        return ring, tract_id - int(self._ring_first[ring])

    def _center_ra(self, geometry: _Ring, index: int) -> float:
        if geometry.is_cap:
            return 0.0
        return (self.config.ra_start_deg + index * 360.0 / geometry.num_tracts) % 360.0

    # -- ring geometry ----------------------------------------------------------------------

    def _ring(self, ring: int) -> _Ring:
        geometry = self._rings.get(ring)
        if geometry is None:
            geometry = self._rings[ring] = self._build_ring(ring)
        return geometry

    def _build_ring(self, ring: int) -> _Ring:
        cfg = self.config
        n = cfg.num_rings
        if ring == -1:
            dec_lo, dec_hi, count, first, dec_center = -90.0, self._dec_edges[0], 1, 0, -90.0
        elif ring == n:
            dec_lo, dec_hi, count, dec_center = self._dec_edges[n], 90.0, 1, 90.0
            first = self.num_tracts - 1
        else:
            dec_lo, dec_hi = self._dec_edges[ring], self._dec_edges[ring + 1]
            count, first = int(self._ring_counts[ring]), int(self._ring_first[ring])
            dec_center = 0.5 * (dec_lo + dec_hi)
        dec_lo, dec_hi = float(dec_lo), float(dec_hi)
        cap = count == 1
        width = 360.0 / count
        scale = cfg.pixel_scale_arcsec / 3600.0
        probe = _make_wcs(0.0, dec_center, scale, (0.0, 0.0), (1, 1))
        ra, dec = _box_boundary_samples(dec_lo, dec_hi, width, cap)
        u, v = probe.wcs_world2pix(ra, dec, 0)
        # TAN stretches sky distances by 1/cos^2(theta) at most, theta from the centre; growing by
        # overlap / cos^2 pixels (plus 1 for rounding the reference pixel) covers the overlap.
        theta = float(np.max(_separation(ra, dec, 0.0, dec_center))) + cfg.tract_overlap_deg
        grow = cfg.tract_overlap_deg / scale / math.cos(math.radians(theta)) ** 2 + 1.0
        patch_x, patch_y = cfg.patch_inner_dimensions
        num_x = max(1, math.ceil((u.max() - u.min() + 2 * grow) / patch_x))
        num_y = max(1, math.ceil((v.max() - v.min() + 2 * grow) / patch_y))
        size = (num_x * patch_x, num_y * patch_y)
        crpix = (
            float(round(-0.5 - (0.5 * (u.min() + u.max()) - 0.5 * size[0]))),
            float(round(-0.5 - (0.5 * (v.min() + v.max()) - 0.5 * size[1]))),
        )
        wcs = _make_wcs(0.0, dec_center, scale, crpix, size)
        inner = _inner_polygon(dec_lo, dec_hi, width, cap)
        outer = ConvexPolygon.from_pixel_box(wcs, (0, 0, size[0], size[1]))
        inner_ra, inner_dec = inner.vertices_radec()
        outer_ra, outer_dec = outer.vertices_radec()
        holds_pole = bool(outer.contains(0.0, 90.0) or outer.contains(0.0, -90.0))
        return _Ring(
            ring=ring,
            first_tract=first,
            num_tracts=count,
            dec_lo=dec_lo,
            dec_hi=dec_hi,
            dec_center=float(dec_center),
            wcs=wcs,
            bbox=size,
            num_patches=(num_x, num_y),
            inner_ra=_wrap180(inner_ra),
            inner_dec=inner_dec,
            outer_ra=_wrap180(outer_ra),
            outer_dec=outer_dec,
            outer_dec_range=outer.dec_range(),
            outer_ra_halfwidth=180.0 if holds_pole else float(np.max(np.abs(_wrap180(outer_ra)))),
        )

    def _patch_grid(self, ring: int) -> _PatchGrid:
        grid = self._patch_grids.get(ring)
        if grid is None:
            grid = self._patch_grids[ring] = self._build_patch_grid(self._ring(ring))
        return grid

    def _build_patch_grid(self, geometry: _Ring) -> _PatchGrid:
        patch_x, patch_y = self.config.patch_inner_dimensions
        border = self.config.patch_border
        num_x, num_y = geometry.num_patches
        size_x, size_y = geometry.bbox
        iy, ix = np.divmod(np.arange(num_x * num_y, dtype=np.int64), num_x)
        inner = np.stack(
            [ix * patch_x, iy * patch_y, np.full_like(ix, patch_x), np.full_like(iy, patch_y)],
            axis=1,
        )
        x0 = np.maximum(inner[:, 0] - border, 0)
        y0 = np.maximum(inner[:, 1] - border, 0)
        x1 = np.minimum(inner[:, 0] + patch_x + border, size_x)
        y1 = np.minimum(inner[:, 1] + patch_y + border, size_y)
        outer = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)
        corners = [self._box_corners_radec(geometry.wcs, box) for box in (outer, inner)]
        (outer_ra, outer_dec), (inner_ra, inner_dec) = corners
        return _PatchGrid(outer, inner, outer_ra, outer_dec, inner_ra, inner_dec)

    @staticmethod
    def _box_corners_radec(wcs: WCS, boxes: NDArray[np.int64]) -> tuple[NDArray, NDArray]:
        """Corner (offset RA, Dec) arrays (P, 4) of pixel boxes, counter-clockwise on the sky."""
        px, py = _ccw_box_corners(boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3])
        ra, dec = wcs.wcs_pix2world(px.ravel(), py.ravel(), 0)
        ra, dec = _wrap180(ra).reshape(px.shape), dec.reshape(px.shape)
        # All boxes share the WCS's parity: fix the order once from the first box.
        v = radec_to_xyz(ra[0], dec[0])
        if np.dot(np.cross(v[0], v[1]), v[2]) < 0:
            ra, dec = ra[:, ::-1], dec[:, ::-1]
        return np.ascontiguousarray(ra), np.ascontiguousarray(dec)

    def _all_rings_filter(self) -> tuple[NDArray, NDArray, NDArray]:
        """Outer-region dec ranges and RA half-widths of every ring, south cap first."""
        if self._ring_filter is None:
            rings = [self._ring(r) for r in range(-1, self.config.num_rings + 1)]
            self._ring_filter = (
                np.array([g.outer_dec_range[0] for g in rings]),
                np.array([g.outer_dec_range[1] for g in rings]),
                np.array([g.outer_ra_halfwidth for g in rings]),
            )
        return self._ring_filter

    # -- tracts and patches -----------------------------------------------------------------

    def tract(self, tract_id: int) -> TractInfo:
        """Description of a tract.

        Raises
        ------
        InvalidDataIdError
            If ``tract_id`` is not an integer id of this sky map.
        """
        tract_id = self._check_tract_id(tract_id)
        info = self._tracts.get(tract_id)
        if info is not None:
            self._tracts.move_to_end(tract_id)
            return info
        info = self._build_tract(tract_id)
        self._tracts[tract_id] = info
        if len(self._tracts) > _TRACT_CACHE_SIZE:
            self._tracts.popitem(last=False)
        return info

    def _build_tract(self, tract_id: int) -> TractInfo:
        ring, index = self._ring_and_slice(tract_id)
        geometry = self._ring(ring)
        center_ra = self._center_ra(geometry, index)
        wcs = geometry.wcs.deepcopy()
        wcs.wcs.crval = [center_ra, geometry.dec_center]
        wcs.wcs.set()
        wcs.pixel_shape = geometry.bbox
        if geometry.is_cap:
            ra_range = None
        else:
            half = 180.0 / geometry.num_tracts
            ra_range = ((center_ra - half) % 360.0, (center_ra + half) % 360.0)
        return TractInfo(
            id=tract_id,
            ring=ring,
            center=(center_ra, geometry.dec_center),
            wcs=wcs,
            bbox=geometry.bbox,
            num_patches=geometry.num_patches,
            inner_region=self._polygon(geometry.inner_ra, geometry.inner_dec, center_ra),
            outer_region=self._polygon(geometry.outer_ra, geometry.outer_dec, center_ra),
            dec_range=(geometry.dec_lo, geometry.dec_hi),
            ra_range=ra_range,
            pixel_scale_arcsec=self.config.pixel_scale_arcsec,
        )

    @staticmethod
    def _polygon(ra_offset: NDArray, dec: NDArray, center_ra: float) -> ConvexPolygon:
        return ConvexPolygon.from_radec(_rotate_ra(ra_offset, center_ra), dec)

    def patch(self, tract_id: int, patch_id: int) -> PatchInfo:
        """Description of a patch of a tract.

        Raises
        ------
        InvalidDataIdError
            If the tract or patch id is not in this sky map.
        """
        tract = self.tract(tract_id)
        patch_id = self._check_patch_id(tract, patch_id)
        ring, _ = self._ring_and_slice(tract.id)
        grid = self._patch_grid(ring)
        bbox = tuple(int(x) for x in grid.bbox[patch_id])
        wcs = tract.wcs.deepcopy()
        wcs.wcs.crpix = tract.wcs.wcs.crpix - np.array(bbox[:2], dtype=float)
        wcs.wcs.set()
        wcs.pixel_shape = bbox[2:]
        center_ra = tract.center[0]
        num_x = tract.num_patches[0]
        return PatchInfo(
            tract=tract.id,
            id=patch_id,
            index=(patch_id % num_x, patch_id // num_x),
            bbox=bbox,
            inner_bbox=tuple(int(x) for x in grid.inner_bbox[patch_id]),
            wcs=wcs,
            inner_region=self._polygon(
                grid.inner_ra[patch_id], grid.inner_dec[patch_id], center_ra
            ),
            outer_region=self._polygon(
                grid.outer_ra[patch_id], grid.outer_dec[patch_id], center_ra
            ),
        )

    def _check_patch_id(self, tract: TractInfo, patch_id: Any) -> int:
        value = normalize_value("patch", patch_id)
        count = tract.num_patches[0] * tract.num_patches[1]
        if value >= count:
            raise InvalidDataIdError(
                f"patch {value} is not in tract {tract.id} of sky map {self.name!r} "
                f"(patches 0..{count - 1})"
            )
        return value

    # -- lookups ----------------------------------------------------------------------------

    def find_tract(self, ra: ArrayLike, dec: ArrayLike) -> int | NDArray[np.int64]:
        """The tract whose inner region holds each position; exact, vectorized.

        Parameters
        ----------
        ra, dec : array_like
            Positions in degrees (any RA; dec in [-90, 90]).

        Returns
        -------
        int or numpy.ndarray of int64
            An int for scalar input, else an array of the broadcast shape.
        """
        ra_arr, dec_arr, scalar = as_radec_arrays(ra, dec)
        shape = ra_arr.shape
        ra_arr, dec_arr = ra_arr.ravel(), dec_arr.ravel()
        slot = np.searchsorted(self._dec_edges, dec_arr, side="right")  # 0: south cap
        tract = np.where(slot == 0, 0, self.num_tracts - 1).astype(np.int64)
        in_ring = (slot > 0) & (slot <= self.config.num_rings)
        ring = slot[in_ring] - 1
        count = self._ring_counts[ring]
        width = 360.0 / count
        turns = np.mod(ra_arr[in_ring] - self.config.ra_start_deg + 0.5 * width, 360.0)
        index = np.minimum(np.floor(turns / width).astype(np.int64), count - 1)
        tract[in_ring] = self._ring_first[ring] + index
        return int(tract[0]) if scalar else tract.reshape(shape)

    def find_tracts(self, region: Region) -> list[int]:
        """Ids of the tracts whose outer region overlaps a region, in increasing order.

        Candidates come from the region's bounding circle against each ring's declination span and
        RA half-width; each candidate is then tested exactly.
        """
        ra_c, dec_c, radius = _bounding(region)
        dec_min, dec_max, halfwidth = self._all_rings_filter()
        near = (dec_max >= dec_c - radius) & (dec_min <= dec_c + radius)
        reach = _ra_halfwidth(dec_c, radius)
        found: list[int] = []
        for slot in np.flatnonzero(near):
            geometry = self._ring(int(slot) - 1)
            for index in self._slices_within(geometry, ra_c, reach + halfwidth[slot]):
                center_ra = self._center_ra(geometry, index)
                outer = self._polygon(geometry.outer_ra, geometry.outer_dec, center_ra)
                if outer.overlaps(region):
                    found.append(geometry.first_tract + index)
        return sorted(found)

    def _slices_within(self, geometry: _Ring, ra: float, halfwidth: float) -> Iterable[int]:
        """Indices of a ring's tracts whose centre RA is within ``halfwidth`` of ``ra``."""
        count = geometry.num_tracts
        if count == 1 or halfwidth >= 180.0:
            return range(count)
        width = 360.0 / count
        start = ra - halfwidth - self.config.ra_start_deg
        first = math.ceil(start / width - 1e-9)
        last = math.floor((start + 2 * halfwidth) / width + 1e-9)
        if last - first + 1 >= count:
            return range(count)
        return sorted({k % count for k in range(first, last + 1)})

    def find_patches(self, tract_id: int, region: Region) -> list[int]:
        """Ids of the patches of a tract whose outer region overlaps a region, increasing."""
        tract_id = self._check_tract_id(tract_id)
        ring, index = self._ring_and_slice(tract_id)
        geometry = self._ring(ring)
        grid = self._patch_grid(ring)
        center_ra = self._center_ra(geometry, index)
        corners = radec_to_xyz(_rotate_ra(grid.outer_ra, center_ra), grid.outer_dec)
        centers = corners.sum(axis=1)
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
        radii = np.max(_xyz_angle(centers[:, None, :], corners), axis=1)
        ra_c, dec_c, radius = _bounding(region)
        gap = _xyz_angle(centers, radec_to_xyz(ra_c, dec_c)) - radii
        candidates = np.flatnonzero(gap <= math.radians(radius) + 1e-9)
        return [int(p) for p in candidates if ConvexPolygon(corners[p]).overlaps(region)]

    def find_patch(self, tract_id: int, ra: ArrayLike, dec: ArrayLike) -> int | NDArray[np.int64]:
        """The patch of a tract whose inner box holds each position; -1 outside the tract box.

        Returns
        -------
        int or numpy.ndarray of int64
            An int for scalar input, else an array of the broadcast shape.
        """
        tract = self.tract(tract_id)
        ra_arr, dec_arr, scalar = as_radec_arrays(ra, dec)
        shape = ra_arr.shape
        ra_arr, dec_arr = ra_arr.ravel(), dec_arr.ravel()
        facing = radec_to_xyz(ra_arr, dec_arr) @ radec_to_xyz(*tract.center) > 1e-6
        x, y = tract.wcs.wcs_world2pix(ra_arr, dec_arr, 0)
        patch_x, patch_y = self.config.patch_inner_dimensions
        num_x, num_y = tract.num_patches
        with np.errstate(invalid="ignore"):
            ix = np.floor((np.where(facing, x, -1.0) + 0.5) / patch_x)
            iy = np.floor((np.where(facing, y, -1.0) + 0.5) / patch_y)
        inside = facing & (ix >= 0) & (ix < num_x) & (iy >= 0) & (iy < num_y)
        patch = np.where(inside, iy * num_x + ix, -1).astype(np.int64)
        return int(patch[0]) if scalar else patch.reshape(shape)

    # -- dimension records ------------------------------------------------------------------

    def dimension_records(
        self, tracts: Iterable[int] | None = None, include_patches: bool = True
    ) -> dict[str, list[dict[str, Any]]]:
        """Records of the ``skymap``, ``tract`` and ``patch`` dimension elements.

        Parameters
        ----------
        tracts : iterable of int, optional
            Restrict tract and patch records to these tracts; all tracts by default (about 19k
            tracts and 3.7M patches for the default configuration, so prefer a selection).
        include_patches : bool
            Whether to generate patch records.

        Returns
        -------
        dict
            ``{'skymap': [...], 'tract': [...], 'patch': [...]}``; region fields are JSON strings
            of ``[ra, dec]`` vertex lists (see ``ConvexPolygon.to_json``).
        """
        ids = (
            range(self.num_tracts)
            if tracts is None
            else sorted({self._check_tract_id(t) for t in tracts})
        )
        records: dict[str, list[dict[str, Any]]] = {
            "skymap": [
                {
                    "name": self.name,
                    "hash": self.config.hash,
                    "config": self.config.to_json(),
                    "tract_count": self.num_tracts,
                }
            ],
            "tract": [],
            "patch": [],
        }
        for tract_id in ids:
            ring, index = self._ring_and_slice(tract_id)
            geometry = self._ring(ring)
            center_ra = self._center_ra(geometry, index)
            records["tract"].append(self._tract_record(tract_id, geometry, center_ra))
            if include_patches:
                records["patch"].extend(self._patch_records(tract_id, ring, center_ra))
        return records

    def _tract_record(self, tract_id: int, geometry: _Ring, center_ra: float) -> dict[str, Any]:
        return {
            "skymap": self.name,
            "id": tract_id,
            "ra": center_ra,
            "dec": geometry.dec_center,
            "ring": geometry.ring,
            "nx": geometry.bbox[0],
            "ny": geometry.bbox[1],
            "pixel_scale": self.config.pixel_scale_arcsec,
            "region": _vertices_json(_rotate_ra(geometry.inner_ra, center_ra), geometry.inner_dec),
            "outer_region": _vertices_json(
                _rotate_ra(geometry.outer_ra, center_ra), geometry.outer_dec
            ),
        }

    def _patch_records(self, tract_id: int, ring: int, center_ra: float) -> list[dict[str, Any]]:
        grid = self._patch_grid(ring)
        num_x = self._ring(ring).num_patches[0]
        inner = _vertices_json_rows(_rotate_ra(grid.inner_ra, center_ra), grid.inner_dec)
        outer = _vertices_json_rows(_rotate_ra(grid.outer_ra, center_ra), grid.outer_dec)
        boxes = grid.bbox.tolist()
        return [
            {
                "skymap": self.name,
                "tract": tract_id,
                "id": patch_id,
                "cell_x": patch_id % num_x,
                "cell_y": patch_id // num_x,
                "x0": box[0],
                "y0": box[1],
                "nx": box[2],
                "ny": box[3],
                "region": inner[patch_id],
                "outer_region": outer[patch_id],
            }
            for patch_id, box in enumerate(boxes)
        ]


# -- helpers on regions -----------------------------------------------------------------------


def _bounding(region: Region) -> tuple[float, float, float]:
    if not isinstance(region, ConvexPolygon | Circle):
        raise InvalidDataIdError(
            f"expected a ConvexPolygon or Circle region, got {type(region).__name__}"
        )
    ra, dec = region.center
    return ra, dec, region.radius_deg


def _ra_halfwidth(dec: float, radius: float) -> float:
    """Largest RA difference (deg) between a circle's centre and its points; 180 over a pole."""
    if abs(dec) + radius >= 90.0 - 1e-9:
        return 180.0
    ratio = math.sin(math.radians(radius)) / math.cos(math.radians(dec))
    return math.degrees(math.asin(min(1.0, ratio))) + 1e-9


def _separation(ra: NDArray, dec: NDArray, ra0: float, dec0: float) -> NDArray[np.float64]:
    return np.degrees(_xyz_angle(radec_to_xyz(ra, dec), radec_to_xyz(ra0, dec0)))


def _xyz_angle(a: NDArray, b: NDArray) -> NDArray[np.float64]:
    return np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), np.sum(a * b, axis=-1))


def _vertices_json(ra: NDArray, dec: NDArray) -> str:
    return json.dumps(np.column_stack([ra, dec]).tolist(), separators=(",", ":"))


def _vertices_json_rows(ra: NDArray, dec: NDArray) -> list[str]:
    """JSON vertex lists of many polygons given as (P, K) arrays."""
    pairs = np.stack([ra, dec], axis=-1).tolist()
    return [json.dumps(row, separators=(",", ":")) for row in pairs]
