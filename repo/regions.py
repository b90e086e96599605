"""Regions on the celestial sphere: convex spherical polygons and circles.

Footprints of visits and detectors, and the regions of tracts and patches, are convex spherical
polygons whose edges are great-circle arcs. All the geometry is done on unit vectors, so nothing is
special at the poles or at RA = 0/360. ``Circle`` (a spherical cap) serves cone searches.

Conventions
-----------
* Angles in the API are degrees; RA is returned in [0, 360).
* A polygon's vertices are stored counter-clockwise as seen from outside the sphere, so that the
  normal ``v[i] x v[i+1]`` of every edge points into the polygon. Either orientation is accepted on
  input and normalized.
* Boundaries are inclusive: a point on an edge (to within ~1e-14 rad) is contained, and two regions
  that only touch overlap.
* The JSON form of a polygon is a compact list of ``[ra, dec]`` pairs in stored order, with full
  float precision so that ``from_json(p.to_json())`` reproduces ``p`` exactly.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import DimensionRecordError, DrpError

#: Tolerance on the sine of the distance of a point from an edge's great circle (about 2 µas): a
#: point this close to the boundary counts as inside.
BOUNDARY_TOLERANCE = 1e-14
_CONVEXITY_TOLERANCE = 1e-12
_DEGENERATE_EDGE = 1e-15
# Bounding circles are padded by this much (rad) so that rounding never rejects a true overlap.
_BOUNDING_MARGIN = 1e-12


def radec_to_xyz(ra: ArrayLike, dec: ArrayLike) -> NDArray[np.float64]:
    """Unit vectors (..., 3) of sky positions given in degrees."""
    ra_rad = np.radians(np.asarray(ra, dtype=float))
    dec_rad = np.radians(np.asarray(dec, dtype=float))
    cos_dec = np.cos(dec_rad)
    return np.stack(
        np.broadcast_arrays(cos_dec * np.cos(ra_rad), cos_dec * np.sin(ra_rad), np.sin(dec_rad)),
        axis=-1,
    )


def xyz_to_radec(xyz: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """RA in [0, 360) and Dec in [-90, 90] (degrees) of vectors (..., 3); they need not be unit."""
    v = np.asarray(xyz, dtype=float)
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    ra = np.degrees(np.arctan2(y, x)) % 360.0
    ra = np.where(ra >= 360.0, 0.0, ra)  # -tiny % 360 rounds to 360
    dec = np.degrees(np.arctan2(z, np.hypot(x, y)))
    return ra, dec


def angular_separation_deg(
    ra1: ArrayLike, dec1: ArrayLike, ra2: ArrayLike, dec2: ArrayLike
) -> NDArray[np.float64]:
    """Great-circle distance (deg) between positions, accurate at all separations."""
    return np.degrees(_angle(radec_to_xyz(ra1, dec1), radec_to_xyz(ra2, dec2)))


def as_radec_arrays(
    ra: ArrayLike, dec: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], bool]:
    """Validate and broadcast sky positions; also say whether the input was a single position.

    Raises
    ------
    DrpError
        If a coordinate is not finite or a declination lies outside [-90, 90].
    """
    ra_arr = np.asarray(ra, dtype=float)
    dec_arr = np.asarray(dec, dtype=float)
    scalar = ra_arr.ndim == 0 and dec_arr.ndim == 0
    try:
        ra_arr, dec_arr = np.broadcast_arrays(ra_arr, dec_arr)
    except ValueError:
        raise DrpError(
            f"ra and dec have incompatible shapes {ra_arr.shape} and {dec_arr.shape}"
        ) from None
    if not (np.isfinite(ra_arr).all() and np.isfinite(dec_arr).all()):
        raise DrpError("sky coordinates must be finite (got NaN or infinity in ra or dec)")
    bad = (dec_arr < -90.0) | (dec_arr > 90.0)
    if bad.any():
        raise DrpError(f"declination {dec_arr[bad].flat[0]!r} is outside [-90, 90] deg")
    return ra_arr, dec_arr, scalar


def _angle(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    """Angle (rad) between vectors, by atan2 so that it is accurate near 0 and pi."""
    return np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), np.sum(a * b, axis=-1))


def _det(a: NDArray[np.float64], b: NDArray[np.float64], c: NDArray[np.float64]) -> NDArray:
    """Triple product a . (b x c), broadcast over leading axes."""
    return np.sum(a * np.cross(b, c), axis=-1)


def _unit(v: NDArray[np.float64]) -> NDArray[np.float64]:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


class ConvexPolygon:
    """A convex spherical polygon with great-circle edges, smaller than a hemisphere.

    Parameters
    ----------
    xyz : array_like, shape (N, 3)
        Vertices as vectors (normalized here), in order around the polygon, either orientation;
        N >= 3.

    Raises
    ------
    DrpError
        If there are fewer than 3 vertices, two consecutive vertices coincide, the polygon is not
        convex, or it does not fit within 90 deg of its centroid.
    """

    __slots__ = ("_xyz", "_normals", "_center", "_radius")

    def __init__(self, xyz: ArrayLike):
        v = np.array(xyz, dtype=float)
        if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] < 3:
            raise DrpError(f"a polygon needs at least 3 vertices as (N, 3) vectors, got {v.shape}")
        if not np.isfinite(v).all():
            raise DrpError("polygon vertices must be finite")
        norms = np.linalg.norm(v, axis=1)
        if (norms == 0).any():
            raise DrpError("polygon vertex is the zero vector")
        v = v / norms[:, None]
        center = v.sum(axis=0)
        if np.linalg.norm(center) < 1e-12:
            raise DrpError("polygon vertices are spread over the whole sphere (no centroid)")
        center = center / np.linalg.norm(center)
        normals = self._edge_normals(v)
        if np.sum(normals @ center) < 0:
            v = v[::-1].copy()
            normals = self._edge_normals(v)
        inside = normals @ v.T  # inside[i, j]: vertex j against edge i
        if (inside < -_CONVEXITY_TOLERANCE).any():
            i, j = np.argwhere(inside < -_CONVEXITY_TOLERANCE)[0]
            ra, dec = xyz_to_radec(v[j])
            raise DrpError(
                f"polygon is not convex: vertex {j} ({float(ra):.6f}, {float(dec):.6f}) lies "
                f"outside edge {i}"
            )
        radius = float(np.max(_angle(center, v)))
        if radius >= math.pi / 2:
            raise DrpError(
                f"polygon extends {math.degrees(radius):.3f} deg from its centroid; "
                "at most 90 deg is supported"
            )
        self._xyz = v
        self._normals = normals
        self._center = center
        self._radius = radius + _BOUNDING_MARGIN

    @staticmethod
    def _edge_normals(v: NDArray[np.float64]) -> NDArray[np.float64]:
        normals = np.cross(v, np.roll(v, -1, axis=0))
        lengths = np.linalg.norm(normals, axis=1)
        if (lengths < _DEGENERATE_EDGE).any():
            i = int(np.argmin(lengths))
            raise DrpError(
                f"polygon edge {i} is degenerate: its vertices coincide or are antipodal"
            )
        return normals / lengths[:, None]

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_radec(cls, ra: ArrayLike, dec: ArrayLike) -> ConvexPolygon:
        """Polygon from vertex coordinates (deg), in order around the polygon, either orientation.

        Parameters
        ----------
        ra, dec : array_like
            Vertex right ascensions and declinations in degrees.

        Returns
        -------
        ConvexPolygon
        """
        ra_arr, dec_arr, _ = as_radec_arrays(ra, dec)
        return cls(radec_to_xyz(ra_arr.ravel(), dec_arr.ravel()))

    @classmethod
    def from_pixel_box(
        cls, wcs: Any, bbox: tuple[int, int, int, int], margin: float = 0.0
    ) -> ConvexPolygon:
        """Polygon through the sky positions of the outer corners of a pixel box.

        The corners of pixels ``x0 .. x0+nx-1`` are at ``x0 - 0.5`` and ``x0 + nx - 0.5`` (pixel
        centres at integers, astropy's 0-based convention). For a gnomonic (TAN) WCS without
        distortion the edges of the box map to great circles, so the polygon is exact; for other
        WCSs it joins the corners by great circles.

        Parameters
        ----------
        wcs : astropy.wcs.WCS
            Celestial WCS of the image.
        bbox : tuple of int
            ``(x0, y0, nx, ny)``: first column and row and size in pixels.
        margin : float
            Grow the box by this many pixels on every side.

        Returns
        -------
        ConvexPolygon
        """
        x0, y0, nx, ny = bbox
        lo_x, lo_y = x0 - 0.5 - margin, y0 - 0.5 - margin
        hi_x, hi_y = x0 + nx - 0.5 + margin, y0 + ny - 0.5 + margin
        ra, dec = wcs.wcs_pix2world([lo_x, hi_x, hi_x, lo_x], [lo_y, lo_y, hi_y, hi_y], 0)
        return cls.from_radec(ra, dec)

    @classmethod
    def from_json(cls, data: str | list) -> ConvexPolygon:
        """Polygon from its JSON form, a list of ``[ra, dec]`` pairs (or the decoded list).

        Raises
        ------
        DimensionRecordError
            If the text is not a list of at least three numeric ``[ra, dec]`` pairs forming a
            valid convex polygon.
        """
        try:
            pairs = json.loads(data) if isinstance(data, str) else data
            arr = np.array(pairs, dtype=float)
        except (ValueError, TypeError) as err:
            raise DimensionRecordError(
                f"region is not a JSON list of [ra, dec] pairs: {err}"
            ) from None
        if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 3:
            raise DimensionRecordError(
                f"region must be a list of at least three [ra, dec] pairs, got shape {arr.shape}"
            )
        try:
            return cls.from_radec(arr[:, 0], arr[:, 1])
        except DimensionRecordError:
            raise
        except DrpError as err:
            raise DimensionRecordError(f"region is not a valid polygon: {err}") from None

    # -- properties ---------------------------------------------------------------------------

    @property
    def xyz(self) -> NDArray[np.float64]:
        """Vertices as unit vectors (N, 3), counter-clockwise seen from outside (a copy)."""
        return self._xyz.copy()

    @property
    def center(self) -> tuple[float, float]:
        """Centre (ra, dec) of the bounding circle: the normalized mean of the vertices."""
        ra, dec = xyz_to_radec(self._center)
        return float(ra), float(dec)

    @property
    def radius_deg(self) -> float:
        """Radius (deg) of the bounding circle about ``center``; it contains the polygon."""
        return math.degrees(self._radius)

    @property
    def bounding_circle(self) -> Circle:
        """The bounding circle as a ``Circle``."""
        return Circle(*self.center, self.radius_deg)

    @property
    def area_sr(self) -> float:
        """Solid angle in steradians."""
        a = self._xyz[0]
        b, c = self._xyz[1:-1], self._xyz[2:]
        # Van Oosterom & Strackee: tan(E/2) = |a.(b x c)| / (1 + a.b + b.c + c.a).
        num = np.abs(_det(a, b, c))
        den = 1.0 + b @ a + np.sum(b * c, axis=1) + c @ a
        return float(np.sum(2.0 * np.arctan2(num, den)))

    def vertices_radec(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Vertex (ra, dec) arrays in degrees, in stored (counter-clockwise) order."""
        return xyz_to_radec(self._xyz)

    def dec_range(self) -> tuple[float, float]:
        """Exact (min, max) declination of the polygon in degrees.

        Edges are great circles, which may reach further from the equator than their endpoints.
        """
        hi = self._max_height(1.0)
        lo = -self._max_height(-1.0)
        return math.degrees(math.asin(lo)), math.degrees(math.asin(hi))

    def _max_height(self, sign: float) -> float:
        """Largest ``sign * z`` over the polygon: 1 if it holds that pole, else over its edges."""
        pole = np.array([0.0, 0.0, sign])
        if self._contains_xyz(pole[None, :])[0]:
            return 1.0
        best = float(np.max(sign * self._xyz[:, 2]))
        # The point of each edge's great circle nearest the pole, if it lies on the edge.
        toward = pole - self._normals * (self._normals @ pole)[:, None]
        length = np.linalg.norm(toward, axis=1)
        ok = length > _DEGENERATE_EDGE
        nearest = toward[ok] / length[ok, None]
        start, end = self._xyz[ok], np.roll(self._xyz, -1, axis=0)[ok]
        n = self._normals[ok]
        on_arc = (_det(start, nearest, n) >= 0) & (_det(nearest, end, n) >= 0)
        if on_arc.any():
            best = max(best, float(np.max(sign * nearest[on_arc, 2])))
        return min(best, 1.0)

    # -- predicates ---------------------------------------------------------------------------

    def contains(self, ra: ArrayLike, dec: ArrayLike) -> bool | NDArray[np.bool_]:
        """Whether positions (deg) lie in the polygon (boundary included); vectorized.

        Returns
        -------
        bool or numpy.ndarray of bool
            A bool for scalar input, else an array of the broadcast shape of ``ra`` and ``dec``.
        """
        ra_arr, dec_arr, scalar = as_radec_arrays(ra, dec)
        inside = self._contains_xyz(radec_to_xyz(ra_arr, dec_arr).reshape(-1, 3))
        return bool(inside[0]) if scalar else inside.reshape(ra_arr.shape)

    def _contains_xyz(self, xyz: NDArray[np.float64]) -> NDArray[np.bool_]:
        return np.all(xyz @ self._normals.T >= -BOUNDARY_TOLERANCE, axis=1)

    def overlaps(self, other: ConvexPolygon | Circle) -> bool:
        """Whether the two regions share at least one point (touching counts).

        Exact for convex polygons: they overlap if a vertex of either lies in the other or a pair
        of edges cross.
        """
        if isinstance(other, Circle):
            return other.overlaps(self)
        if not isinstance(other, ConvexPolygon):
            raise DrpError(f"cannot test overlap of a polygon with {type(other).__name__}")
        if float(_angle(self._center, other._center)) > self._radius + other._radius:
            return False
        if self._contains_xyz(other._xyz).any() or other._contains_xyz(self._xyz).any():
            return True
        return _edges_cross(self, other)

    # -- serialization ------------------------------------------------------------------------

    def to_json(self) -> str:
        """Compact JSON list of ``[ra, dec]`` vertex pairs (deg)."""
        ra, dec = self.vertices_radec()
        return json.dumps(np.column_stack([ra, dec]).tolist(), separators=(",", ":"))

    def __repr__(self) -> str:
        ra, dec = self.center
        return (
            f"ConvexPolygon({len(self._xyz)} vertices, center=({ra:.6f}, {dec:.6f}), "
            f"radius={self.radius_deg:.6f} deg)"
        )


def _edges_cross(a: ConvexPolygon, b: ConvexPolygon) -> bool:
    """Whether any edge of ``a`` crosses (or touches) any edge of ``b``."""
    a1, a2, na = a._xyz[:, None, :], np.roll(a._xyz, -1, axis=0)[:, None, :], a._normals[:, None]
    b1, b2, nb = b._xyz[None, :, :], np.roll(b._xyz, -1, axis=0)[None, :, :], b._normals[None]
    p = np.cross(na, nb)
    length = np.linalg.norm(p, axis=-1, keepdims=True)
    usable = length[..., 0] > _DEGENERATE_EDGE  # edges on one great circle cross at a vertex
    p = p / np.where(length > 0, length, 1.0)
    tol = -BOUNDARY_TOLERANCE
    for q in (p, -p):
        on_a = (_det(a1, q, na) >= tol) & (_det(q, a2, na) >= tol)
        on_b = (_det(b1, q, nb) >= tol) & (_det(q, b2, nb) >= tol)
        if np.any(usable & on_a & on_b):
            return True
    return False


class Circle:
    """A spherical cap: all points within ``radius_deg`` of a centre.

    Parameters
    ----------
    ra, dec : float
        Centre in degrees.
    radius_deg : float
        Angular radius in degrees, 0 <= radius < 180.
    """

    __slots__ = ("_ra", "_dec", "_radius", "_xyz")

    def __init__(self, ra: float, dec: float, radius_deg: float):
        ra_arr, dec_arr, scalar = as_radec_arrays(ra, dec)
        if not scalar:
            raise DrpError("a Circle needs a single centre (ra, dec)")
        if not (math.isfinite(radius_deg) and 0.0 <= radius_deg < 180.0):
            raise DrpError(f"circle radius must be in [0, 180) deg, got {radius_deg!r}")
        self._ra = float(ra_arr) % 360.0
        self._dec = float(dec_arr)
        self._radius = math.radians(radius_deg)
        self._xyz = radec_to_xyz(self._ra, self._dec)

    @property
    def center(self) -> tuple[float, float]:
        """Centre (ra, dec) in degrees."""
        return self._ra, self._dec

    @property
    def radius_deg(self) -> float:
        """Angular radius in degrees."""
        return math.degrees(self._radius)

    @property
    def area_sr(self) -> float:
        """Solid angle in steradians."""
        return 2.0 * math.pi * (1.0 - math.cos(self._radius))

    def contains(self, ra: ArrayLike, dec: ArrayLike) -> bool | NDArray[np.bool_]:
        """Whether positions (deg) lie within the circle (boundary included); vectorized."""
        ra_arr, dec_arr, scalar = as_radec_arrays(ra, dec)
        xyz = radec_to_xyz(ra_arr, dec_arr)
        # Compare chord lengths: accurate for tiny radii, unlike cosines.
        chord2 = np.sum((xyz - self._xyz) ** 2, axis=-1)
        inside = chord2 <= (2.0 * math.sin(self._radius / 2.0)) ** 2 * (1 + 1e-15)
        return bool(inside) if scalar else inside

    def overlaps(self, other: ConvexPolygon | Circle) -> bool:
        """Whether the circle shares at least one point with a polygon or another circle."""
        if isinstance(other, Circle):
            return float(_angle(self._xyz, other._xyz)) <= self._radius + other._radius + 1e-15
        if not isinstance(other, ConvexPolygon):
            raise DrpError(f"cannot test overlap of a circle with {type(other).__name__}")
        if float(_angle(self._xyz, other._center)) > self._radius + other._radius:
            return False
        if other._contains_xyz(self._xyz[None, :])[0]:
            return True
        return _distance_to_boundary(self._xyz, other) <= self._radius + 1e-15

    def __repr__(self) -> str:
        return f"Circle(ra={self._ra!r}, dec={self._dec!r}, radius_deg={self.radius_deg!r})"


def _distance_to_boundary(point: NDArray[np.float64], polygon: ConvexPolygon) -> float:
    """Angular distance (rad) from a point to the nearest edge of a polygon."""
    start, end, n = polygon._xyz, np.roll(polygon._xyz, -1, axis=0), polygon._normals
    # Foot of the perpendicular from the point onto each edge's great circle.
    foot = point[None, :] - n * (n @ point)[:, None]
    length = np.linalg.norm(foot, axis=1)
    ok = length > _DEGENERATE_EDGE
    foot_unit = np.where(ok[:, None], foot / np.where(ok, length, 1.0)[:, None], start)
    on_arc = ok & (_det(start, foot_unit, n) >= 0) & (_det(foot_unit, end, n) >= 0)
    to_line = np.arctan2(np.abs(n @ point), length)
    to_ends = np.minimum(_angle(point[None, :], start), _angle(point[None, :], end))
    return float(np.min(np.where(on_arc, to_line, to_ends)))


#: Any region the sky map and the registry accept.
Region = ConvexPolygon | Circle
