"""Which tracts and patches of a sky map, and which HEALPix pixels (reference catalog shards),
each visit and detector overlaps.

Graph building relates visit/detector datasets to tract/patch quanta through sky regions: the
footprint of each detector in each visit (``visit_detector_region`` records, JSON lists of
``[ra, dec]`` vertices joined by great circles) or, failing those, the visit's own region.

The test is exact and fast. The candidate tracts of a visit come from
:meth:`RingsSkyMap.find_tracts` on a circle around all its detectors; then, for each candidate
tract, every detector polygon is projected with the tract's gnomonic (TAN) WCS. TAN maps great
circles to straight lines, so a detector polygon becomes a plane polygon and a patch's outer
region becomes exactly its pixel box ``[x0 - 0.5, x0 + nx - 0.5] x [y0 - 0.5, y0 + ny - 0.5]``;
the separating-axis test of convex polygons against boxes then decides all detectors against all
patches at once. Touching counts as overlapping, as in :meth:`ConvexPolygon.overlaps`. A polygon
with a vertex more than 89 deg from the tract centre (never the case for a real detector near a
tract) is tested on the sphere with :meth:`RingsSkyMap.find_patches` instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from repo.errors import DimensionRecordError, DrpError
from repo.regions import Circle, ConvexPolygon, radec_to_xyz, xyz_to_radec
from repo.skymap import RingsSkyMap, TractInfo

#: A (tract, patch) pair.
TractPatch = tuple[int, int]

_FRONT = np.cos(np.radians(89.0))


class MissingRegionError(DrpError, LookupError):
    """A visit has neither detector regions nor a region of its own."""


def parse_vertices(region: str | Sequence[Sequence[float]]) -> NDArray[np.float64]:
    """Vertices ``(K, 2)`` of ``[ra, dec]`` (deg) from a region's JSON text or list."""
    try:
        data = json.loads(region) if isinstance(region, str) else region
        vertices = np.asarray(data, dtype=float)
    except (TypeError, ValueError) as exc:
        raise DimensionRecordError(f"region is not a JSON list of [ra, dec] pairs: {exc}") from None
    if vertices.ndim != 2 or vertices.shape[1] != 2 or len(vertices) < 3:
        raise DimensionRecordError(
            f"region must be a list of at least three [ra, dec] pairs, got shape {vertices.shape}"
        )
    return vertices


def patch_outer_boxes(skymap: RingsSkyMap, tract: TractInfo) -> NDArray[np.int64]:
    """Outer boxes ``(P, 4)`` = ``x0, y0, nx, ny`` of every patch of a tract, in tract pixels.

    A patch's inner box is its cell of the grid; the outer box is that grown by the sky map's
    ``patch_border`` and clipped to the tract's bounding box (see :mod:`repo.skymap`).
    """
    size_x, size_y = skymap.config.patch_inner_dimensions
    border = skymap.config.patch_border
    num_x, num_y = tract.num_patches
    iy, ix = np.divmod(np.arange(num_x * num_y, dtype=np.int64), num_x)
    x0 = np.maximum(ix * size_x - border, 0)
    y0 = np.maximum(iy * size_y - border, 0)
    x1 = np.minimum(ix * size_x + size_x + border, tract.bbox[0])
    y1 = np.minimum(iy * size_y + size_y + border, tract.bbox[1])
    return np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)


def polygons_overlap_boxes(
    x: NDArray[np.float64], y: NDArray[np.float64], boxes: NDArray[np.int64]
) -> NDArray[np.bool_]:
    """Which convex plane polygons overlap which pixel boxes (touching counts).

    Parameters
    ----------
    x, y : numpy.ndarray, shape (D, K)
        Vertices of D convex polygons in order (either orientation); a polygon with fewer
        vertices may repeat its last one.
    boxes : numpy.ndarray, shape (P, 4)
        ``x0, y0, nx, ny`` pixel boxes covering ``[x0 - 0.5, x0 + nx - 0.5]`` and likewise in y.

    Returns
    -------
    numpy.ndarray of bool, shape (D, P)
    """
    lo_x = boxes[:, 0] - 0.5
    hi_x = boxes[:, 0] + boxes[:, 2] - 0.5
    lo_y = boxes[:, 1] - 0.5
    hi_y = boxes[:, 1] + boxes[:, 3] - 0.5
    # Separated along x or y (the box's own axes)?
    apart = (x.max(axis=1)[:, None] < lo_x) | (x.min(axis=1)[:, None] > hi_x)
    apart |= (y.max(axis=1)[:, None] < lo_y) | (y.min(axis=1)[:, None] > hi_y)
    result = ~apart
    poly, box = np.nonzero(result)
    if not len(poly):
        return result
    # Separated along a polygon edge? Only for the pairs whose bounding boxes meet.
    # Outward edge normals are (dy, -dx) for a counter-clockwise polygon.
    dx = np.roll(x, -1, axis=1) - x
    dy = np.roll(y, -1, axis=1) - y
    area = np.sum(x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y, axis=1)
    sign = np.where(area >= 0, 1.0, -1.0)[:, None]
    nx, ny = (dy * sign)[poly], (-dx * sign)[poly]  # (pairs, K)
    limit = nx * x[poly] + ny * y[poly]  # the polygon lies where n . p <= limit
    # The corner of each box that is furthest along -n: the smallest n . c.
    near_x = np.where(nx > 0, lo_x[box][:, None], hi_x[box][:, None])
    near_y = np.where(ny > 0, lo_y[box][:, None], hi_y[box][:, None])
    nearest = nx * near_x + ny * near_y
    tolerance = 1e-12 * (np.abs(limit) + 1.0)
    result[poly, box] = ~np.any(nearest > limit + tolerance, axis=1)
    return result


def find_polygon_patches(
    skymap: RingsSkyMap,
    polygons: Sequence[NDArray[np.float64]],
    box_cache: dict[int, NDArray[np.int64]] | None = None,
) -> list[list[TractPatch]]:
    """The (tract, patch) pairs whose outer regions each polygon overlaps, sorted.

    Parameters
    ----------
    skymap
        The sky map.
    polygons
        Vertex arrays ``(K, 2)`` of ``[ra, dec]`` (deg), each a convex spherical polygon;
        best called with the detectors of one visit together.
    box_cache
        Optional dict to keep patch boxes per tract between calls.
    """
    if not polygons:
        return []
    count = max(len(p) for p in polygons)
    padded = np.stack([np.concatenate([p, np.repeat(p[-1:], count - len(p), 0)]) for p in polygons])
    xyz = radec_to_xyz(padded[..., 0], padded[..., 1])  # (D, K, 3)
    center = xyz.reshape(-1, 3).sum(axis=0)
    center /= np.linalg.norm(center)
    radius = np.degrees(np.max(np.arccos(np.clip(xyz.reshape(-1, 3) @ center, -1.0, 1.0))))
    ra_c, dec_c = xyz_to_radec(center)
    circle = Circle(float(ra_c), float(dec_c), min(float(radius) + 1e-9, 179.0))
    found: list[list[TractPatch]] = [[] for _ in polygons]
    boxes_of = box_cache if box_cache is not None else {}
    # Each polygon's own bounding circle, to skip tracts that only the visit's circle reaches.
    own_center = xyz.sum(axis=1)
    own_center /= np.linalg.norm(own_center, axis=1, keepdims=True)
    own_radius = np.max(np.arccos(np.clip(np.sum(xyz * own_center[:, None], -1), -1, 1)), 1)
    for tract_id in skymap.find_tracts(circle):
        tract = skymap.tract(tract_id)
        tract_center = radec_to_xyz(*tract.center)
        reach = own_radius + np.radians(tract.outer_region.radius_deg) + 1e-9
        near = np.arccos(np.clip(own_center @ tract_center, -1.0, 1.0)) <= reach
        if not near.any():
            continue
        boxes = boxes_of.get(tract_id)
        if boxes is None:
            boxes = boxes_of[tract_id] = patch_outer_boxes(skymap, tract)
        front = near & np.all(xyz @ tract_center > _FRONT, axis=1)
        if front.any():
            px, py = tract.wcs.wcs_world2pix(
                padded[front, :, 0].ravel(), padded[front, :, 1].ravel(), 0
            )
            shape = (int(front.sum()), count)
            hits = polygons_overlap_boxes(px.reshape(shape), py.reshape(shape), boxes)
            for row, index in enumerate(np.flatnonzero(front)):
                found[index].extend((tract_id, int(p)) for p in np.flatnonzero(hits[row]))
        for index in np.flatnonzero(near & ~front):
            polygon = ConvexPolygon.from_radec(polygons[index][:, 0], polygons[index][:, 1])
            found[index].extend((tract_id, p) for p in skymap.find_patches(tract_id, polygon))
    return [sorted(f) for f in found]


class RegionOverlaps:
    """Tract/patch overlaps of the visits and detectors of a repository, computed on demand.

    Parameters
    ----------
    detector_regions
        ``{(instrument, visit): {detector: region}}`` from ``visit_detector_region`` records.
    visit_regions
        ``{(instrument, visit): region}`` from visit records (used when a visit has no detector
        regions).
    skymap
        The sky map to relate them to.
    """

    def __init__(
        self,
        detector_regions: Mapping[tuple[str, int], Mapping[int, Any]],
        visit_regions: Mapping[tuple[str, int], Any],
        skymap: RingsSkyMap | None,
    ):
        self.detector_regions = detector_regions
        self.visit_regions = visit_regions
        self.skymap = skymap
        self._visits: dict[tuple[str, int], dict[int | None, tuple[TractPatch, ...]]] = {}
        self._boxes: dict[int, NDArray[np.int64]] = {}

    @classmethod
    def from_repository(cls, repo: Any, skymap: RingsSkyMap | None) -> RegionOverlaps:
        """Read every detector and visit region of a repository."""
        detectors: dict[tuple[str, int], dict[int, str]] = {}
        frame = repo.registry.dimension_records("visit_detector_region")
        for inst, visit, det, region in frame.select(
            "instrument", "visit", "detector", "region"
        ).iter_rows():
            if region:
                detectors.setdefault((inst, visit), {})[det] = region
        visits = {
            (inst, visit): region
            for inst, visit, region in repo.registry.dimension_records("visit")
            .select("instrument", "id", "region")
            .iter_rows()
            if region
        }
        return cls(detectors, visits, skymap)

    def patches(self, data_id: Mapping[str, Any]) -> tuple[TractPatch, ...]:
        """(tract, patch) pairs overlapping a dataId with instrument and visit (and detector).

        Without a detector, the union over the visit's detectors.

        Raises
        ------
        MissingRegionError
            If the visit has neither detector regions nor a region of its own.
        """
        by_detector = self._visit(data_id["instrument"], data_id["visit"])
        detector = data_id.get("detector")
        if detector is not None and detector in by_detector:
            return by_detector[detector]
        return by_detector[None]

    def healpix_pixels(self, data_id: Mapping[str, Any], order: int) -> tuple[int, ...]:
        """HEALPix pixels (nested, ``order``) that may overlap a dataId with instrument and
        visit (and detector): those within the circle around its polygons, a superset of the
        exact answer (a shard too many costs a read, none too few)."""
        detectors, polygons = self._polygons(data_id["instrument"], data_id["visit"])
        detector = data_id.get("detector")
        if detector is not None and detector in detectors:
            polygons = [polygons[detectors.index(detector)]]
        return healpix_cover(polygons, order)

    def prepare(self, visits: Iterable[tuple[str, int]]) -> None:
        """Compute the overlaps of many visits at once (much faster than one by one).

        Visits are batched by the tract that owns their centre, so each batch is small on the
        sky and its candidate tracts are found once.
        """
        todo = sorted({tuple(v) for v in visits} - set(self._visits))
        if not todo:
            return
        shapes = {key: self._polygons(*key) for key in todo}
        centers = np.array([_center(polygons) for _, polygons in shapes.values()])
        owners = np.atleast_1d(self.skymap.find_tract(centers[:, 0], centers[:, 1]))
        for owner in np.unique(owners):
            batch = [key for key, o in zip(todo, owners, strict=True) if o == owner]
            flat = [p for key in batch for p in shapes[key][1]]
            found = iter(find_polygon_patches(self.skymap, flat, self._boxes))
            for key in batch:
                detectors, polygons = shapes[key]
                self._store(key, detectors, [next(found) for _ in polygons])

    def _visit(self, instrument: str, visit: int) -> dict[int | None, tuple[TractPatch, ...]]:
        key = (instrument, visit)
        cached = self._visits.get(key)
        if cached is None:
            detectors, polygons = self._polygons(instrument, visit)
            found = find_polygon_patches(self.skymap, polygons, self._boxes)
            cached = self._store(key, detectors, found)
        return cached

    def _polygons(self, instrument: str, visit: int) -> tuple[list[int], list[NDArray]]:
        """Detector ids and footprints of a visit (no detectors: the visit's own region)."""
        key = (instrument, visit)
        regions = self.detector_regions.get(key)
        if regions:
            detectors = sorted(regions)
            return detectors, [parse_vertices(regions[d]) for d in detectors]
        if key in self.visit_regions:
            return [], [parse_vertices(self.visit_regions[key])]
        raise MissingRegionError(
            f"visit {visit} of instrument {instrument} has no sky region: neither "
            "visit_detector_region records nor a region in its visit record, so it cannot be "
            "related to tracts and patches (ingest raws with a WCS, or insert the regions)"
        )

    def _store(
        self, key: tuple[str, int], detectors: list[int], found: list[list[TractPatch]]
    ) -> dict[int | None, tuple[TractPatch, ...]]:
        result: dict[int | None, tuple[TractPatch, ...]] = {
            d: tuple(f) for d, f in zip(detectors, found, strict=False)
        }
        result[None] = tuple(sorted({tp for f in found for tp in f}))
        self._visits[key] = result
        return result


def healpix_cover(polygons: Sequence[NDArray[np.float64]], order: int) -> tuple[int, ...]:
    """Nested HEALPix pixels at ``order`` that may overlap the polygons: those astropy-healpix's
    cone search finds for the smallest circle about their mean vertex that holds them all, and
    their neighbours (a superset: a shard too many costs a read, one too few loses stars)."""
    from astropy import units as u
    from astropy_healpix import HEALPix

    ra, dec = _center(polygons)
    vertices = np.concatenate(polygons)
    centre = radec_to_xyz(ra, dec)
    cosines = np.clip(radec_to_xyz(vertices[:, 0], vertices[:, 1]) @ centre, -1.0, 1.0)
    radius = float(np.degrees(np.arccos(cosines.min())))
    healpix = HEALPix(nside=2**order, order="nested")
    pixels = healpix.cone_search_lonlat(ra * u.deg, dec * u.deg, radius * u.deg)
    # the cone search can miss a pixel that the circle only partly covers
    # (astropy-healpix#287): the neighbours of what it found make the cover a superset
    neighbours = healpix.neighbours(np.asarray(pixels, np.int64)).ravel()
    cover = set(int(p) for p in pixels) | {int(p) for p in neighbours if p >= 0}
    return tuple(sorted(cover))


def _center(polygons: Sequence[NDArray[np.float64]]) -> tuple[float, float]:
    """(ra, dec) of the normalized mean of all vertices of some polygons."""
    xyz = radec_to_xyz(*np.concatenate(polygons).T).sum(axis=0)
    ra, dec = xyz_to_radec(xyz / np.linalg.norm(xyz))
    return float(ra), float(dec)
