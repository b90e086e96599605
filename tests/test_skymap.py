"""Tests of repo.skymap: tract ownership, WCS and patch geometry, lookups and dimension records.

Brute-force answers come from the geometry as documented in the module (ring edges, RA slices),
recomputed here independently of the sky map's own code paths.
"""

from __future__ import annotations

import json
import math
import pickle
import time

import numpy as np
import pytest
from astropy.wcs import WCS

from repo.dimensions import UNIVERSE
from repo.errors import DimensionRecordError, InvalidDataIdError
from repo.regions import (
    Circle,
    ConvexPolygon,
    angular_separation_deg,
    radec_to_xyz,
    xyz_to_radec,
)
from repo.skymap import (
    INNER_REGION_TOLERANCE_ARCSEC,
    RingsSkyMap,
    SkyMapConfig,
)

DEFAULT_HASH = "26ec8c2a9a79ce521c71109ed7735ae2e72eabf8251cede31f01ce55c25665de"


@pytest.fixture(scope="module")
def test_map() -> RingsSkyMap:
    return RingsSkyMap(SkyMapConfig.test())


@pytest.fixture(scope="module")
def default_map() -> RingsSkyMap:
    return RingsSkyMap(SkyMapConfig())


class Boxes:
    """The inner boxes of every tract, computed from the documented geometry."""

    def __init__(self, cfg: SkyMapConfig):
        n = cfg.num_rings
        h = 180.0 / (n + 1)
        edges = -90.0 + h * (np.arange(n + 1) + 0.5)
        rows = [(-90.0, edges[0], 0.0, 360.0, -1)]
        for i in range(n):
            lo, hi = edges[i], edges[i + 1]
            d = 0.0 if lo < 0 < hi else min(abs(lo), abs(hi))
            count = int(360.0 * math.cos(math.radians(d)) / h) + 1
            rows += [
                (lo, hi, (cfg.ra_start_deg + j * 360.0 / count) % 360.0, 360.0 / count, i)
                for j in range(count)
            ]
        rows.append((edges[n], 90.0, 0.0, 360.0, n))
        table = np.array(rows)
        self.dec_lo, self.dec_hi, self.ra_center, self.width = table[:, :4].T
        self.ring = table[:, 4].astype(int)
        self.dec_center = np.where(
            self.width == 360.0,
            np.sign(self.dec_lo + self.dec_hi) * 90.0,
            0.5 * (self.dec_lo + self.dec_hi),
        )
        self.edges = edges

    def __len__(self) -> int:
        return len(self.dec_lo)

    def owners(self, ra: np.ndarray, dec: np.ndarray, chunk: int = 500) -> list[np.ndarray]:
        """For each point, the ids of every box holding it (half-open; the north cap has dec 90)."""
        result = []
        last = len(self) - 1
        for start in range(0, len(ra), chunk):
            r, d = ra[start : start + chunk, None], dec[start : start + chunk, None]
            in_dec = (d >= self.dec_lo) & (
                (d < self.dec_hi) | (np.arange(len(self)) == last) & (d <= 90)
            )
            offset = np.mod(r - self.ra_center + 0.5 * self.width, 360.0)
            inside = in_dec & (offset < self.width)
            result += [np.flatnonzero(row) for row in inside]
        return result


def random_sky(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 360, count), np.degrees(np.arcsin(rng.uniform(-1, 1, count)))


def special_points(boxes: Boxes) -> tuple[np.ndarray, np.ndarray]:
    """Poles, RA = 0/360, ring edges (exactly and one ulp below) and RA slice edges ± 1e-9."""
    ra = [0.0, 123.0, 0.0, 359.0, 360.0, 0.0, 360.0, 123.4]
    dec = [90.0, 90.0, -90.0, -90.0, 0.0, 0.0, 45.0, 0.0]
    for edge in boxes.edges:
        for value in (edge, np.nextafter(edge, -np.inf), np.nextafter(edge, np.inf)):
            ra += [0.0, 360.0, 17.3, 359.999999]
            dec += [value] * 4
    for lo, hi, c, w in zip(boxes.dec_lo, boxes.dec_hi, boxes.ra_center, boxes.width, strict=True):
        if w < 360:
            for off in (-0.5 * w - 1e-9, -0.5 * w + 1e-9, 0.5 * w - 1e-9, 0.5 * w + 1e-9):
                ra.append((c + off) % 360.0)
                dec.append(0.5 * (lo + hi))
    return np.array(ra), np.array(dec)


def rotated_square(ra: float, dec: float, side: float, angle: float) -> ConvexPolygon:
    """A detector-like square footprint (side in deg) through a TAN WCS."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [1.0, 1.0]
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    wcs.wcs.cd = np.array([[-c, s], [s, c]]) * side / 2
    wcs.wcs.set()
    return ConvexPolygon.from_radec(*wcs.wcs_pix2world([-1, 1, 1, -1], [-1, -1, 1, 1], 0))


def displaced(ra: np.ndarray, dec: np.ndarray, distance: float, seed: int):
    """Points moved by ``distance`` deg in random directions."""
    rng = np.random.default_rng(seed)
    p = radec_to_xyz(ra, dec)
    t = np.cross(p, rng.normal(size=p.shape))
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    d = math.radians(distance)
    return xyz_to_radec(math.cos(d) * p + math.sin(d) * t)


# -- configuration ---------------------------------------------------------------------------


def test_config_hash_is_stable():
    cfg = SkyMapConfig()
    assert cfg.hash == DEFAULT_HASH
    assert SkyMapConfig.from_dict(cfg.to_dict()).hash == cfg.hash
    assert SkyMapConfig.from_json(cfg.to_json()) == cfg
    assert (
        SkyMapConfig(tract_overlap_deg=1 / 60, patch_inner_dimensions=[2000, 2000]).hash == cfg.hash
    )
    assert json.loads(cfg.to_json())["patch_inner_dimensions"] == [2000, 2000]


@pytest.mark.parametrize(
    "change",
    [
        {"name": "other"},
        {"num_rings": 121},
        {"tract_overlap_deg": 0.02},
        {"pixel_scale_arcsec": 0.21},
        {"patch_inner_dimensions": (2000, 2001)},
        {"patch_border": 99},
        {"ra_start_deg": 0.5},
    ],
)
def test_config_hash_is_sensitive_to_every_field(change):
    assert SkyMapConfig(**change).hash != SkyMapConfig().hash


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"num_rings": 0}, DimensionRecordError, "num_rings"),
        ({"num_rings": 12.0}, DimensionRecordError, "num_rings"),
        ({"num_rings": True}, DimensionRecordError, "num_rings"),
        ({"tract_overlap_deg": -0.1}, DimensionRecordError, "tract_overlap_deg"),
        ({"pixel_scale_arcsec": 0.0}, DimensionRecordError, "pixel_scale"),
        ({"pixel_scale_arcsec": float("nan")}, DimensionRecordError, "pixel_scale"),
        ({"patch_inner_dimensions": (100,)}, DimensionRecordError, "patch_inner_dimensions"),
        ({"patch_inner_dimensions": (100, 0)}, DimensionRecordError, "patch_inner_dimensions"),
        ({"patch_border": -1}, DimensionRecordError, "patch_border"),
        ({"projection": "SIN"}, DimensionRecordError, "projection"),
        ({"ra_start_deg": 360.0}, DimensionRecordError, "ra_start"),
        ({"name": "bad/name"}, InvalidDataIdError, "skymap"),
    ],
)
def test_config_rejects_bad_values(kwargs, error, message):
    with pytest.raises(error, match=message):
        SkyMapConfig(**kwargs)


def test_config_from_dict_rejects_unknown_keys_and_bad_json():
    with pytest.raises(DimensionRecordError, match="unknown sky map config key"):
        SkyMapConfig.from_dict({**SkyMapConfig().to_dict(), "rings": 3})
    with pytest.raises(DimensionRecordError, match="JSON"):
        SkyMapConfig.from_json("{not json")


def test_presets_have_the_documented_shapes(default_map, test_map):
    lsst = RingsSkyMap(SkyMapConfig.lsst_like())
    assert default_map.num_tracts == lsst.num_tracts == len(Boxes(SkyMapConfig())) == 18938
    assert test_map.num_tracts == len(Boxes(SkyMapConfig.test()))
    equatorial = default_map.tract(default_map.find_tract(0.0, 0.1))
    assert equatorial.num_patches == (14, 14)
    assert lsst.tract(lsst.find_tract(0.0, 0.1)).num_patches == (7, 7)
    assert 1.45 < default_map.config.ring_height_deg < 1.5


# -- tract ownership -------------------------------------------------------------------------


def test_find_tract_matches_brute_force_on_100k_points(test_map):
    boxes = Boxes(test_map.config)
    ra, dec = random_sky(100_000, seed=1)
    extra_ra, extra_dec = special_points(boxes)
    ra, dec = np.concatenate([ra, extra_ra]), np.concatenate([dec, extra_dec])
    owners = boxes.owners(ra, dec, chunk=5000)
    counts = np.array([len(o) for o in owners])
    assert (counts == 1).all(), f"{(counts != 1).sum()} points in {set(counts)} boxes"
    expected = np.array([o[0] for o in owners])
    found = test_map.find_tract(ra, dec)
    assert found.dtype == np.int64 and found.shape == ra.shape
    np.testing.assert_array_equal(found, expected)


def test_find_tract_matches_brute_force_on_the_default_map(default_map):
    boxes = Boxes(default_map.config)
    ra, dec = random_sky(1500, seed=2)
    extra_ra, extra_dec = special_points(boxes)
    pick = np.random.default_rng(3).choice(len(extra_ra), 1500, replace=False)
    ra, dec = np.concatenate([ra, extra_ra[pick]]), np.concatenate([dec, extra_dec[pick]])
    owners = boxes.owners(ra, dec)
    assert all(len(o) == 1 for o in owners)
    np.testing.assert_array_equal(default_map.find_tract(ra, dec), [o[0] for o in owners])


def test_find_tract_edges_and_poles(test_map):
    last = test_map.num_tracts - 1
    assert test_map.find_tract(0.0, 90.0) == last and test_map.find_tract(250.0, -90.0) == 0
    edges = Boxes(test_map.config).edges
    below = test_map.find_tract(0.0, np.nextafter(edges, -np.inf))
    at = test_map.find_tract(0.0, edges)
    rings_below = [test_map.tract(int(t)).ring for t in below]
    rings_at = [test_map.tract(int(t)).ring for t in at]
    assert rings_below == list(range(-1, test_map.config.num_rings))
    assert rings_at == list(range(0, test_map.config.num_rings + 1))
    assert test_map.find_tract(360.0, 0.0) == test_map.find_tract(0.0, 0.0)
    assert test_map.find_tract(-10.0, 30.0) == test_map.find_tract(350.0, 30.0)
    assert isinstance(test_map.find_tract(1.0, 2.0), int)
    assert test_map.find_tract(np.zeros((2, 3)), np.zeros((2, 3))).shape == (2, 3)


def test_find_tract_rejects_bad_coordinates(test_map):
    from repo.errors import DrpError

    with pytest.raises(DrpError, match="outside"):
        test_map.find_tract(0.0, 90.5)
    with pytest.raises(DrpError, match="finite"):
        test_map.find_tract([0.0, np.nan], [0.0, 0.0])


def test_tract_info_matches_documented_boxes(default_map, test_map):
    for skymap in (test_map, default_map):
        boxes = Boxes(skymap.config)
        for tract_id in [
            0,
            1,
            2,
            skymap.num_tracts // 2,
            skymap.num_tracts - 2,
            skymap.num_tracts - 1,
        ]:
            info = skymap.tract(tract_id)
            assert info.id == tract_id and info.ring == boxes.ring[tract_id]
            assert info.dec_range == (boxes.dec_lo[tract_id], boxes.dec_hi[tract_id])
            assert info.center == pytest.approx(
                (boxes.ra_center[tract_id], boxes.dec_center[tract_id])
            )
            if boxes.width[tract_id] == 360:
                assert info.ra_range is None
            else:
                half = boxes.width[tract_id] / 2
                c = boxes.ra_center[tract_id]
                assert info.ra_range == pytest.approx(((c - half) % 360, (c + half) % 360))


def _check_points_in_their_tracts(skymap: RingsSkyMap, ra: np.ndarray, dec: np.ndarray) -> None:
    """Each point maps into its tract's box; it and points up to the overlap away are covered."""
    overlap = skymap.config.tract_overlap_deg
    near_ra, near_dec = displaced(ra, dec, 0.999 * overlap, seed=4)
    tracts = skymap.find_tract(ra, dec)
    for tract_id in np.unique(tracts):
        info = skymap.tract(int(tract_id))
        sel = tracts == tract_id
        nx, ny = info.bbox
        for r, d in ((ra[sel], dec[sel]), (near_ra[sel], near_dec[sel])):
            x, y = info.wcs.wcs_world2pix(r, d, 0)
            assert ((x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)).all()
            assert info.outer_region.contains(r, d).all()
        assert info.inner_region.contains(ra[sel], dec[sel]).all()


def test_points_lie_in_their_tract_box_with_the_overlap(test_map):
    ra, dec = random_sky(100_000, seed=5)
    extra_ra, extra_dec = special_points(Boxes(test_map.config))
    _check_points_in_their_tracts(
        test_map, np.concatenate([ra, extra_ra]), np.concatenate([dec, extra_dec])
    )


def test_points_lie_in_their_tract_box_on_the_default_map(default_map):
    ra, dec = random_sky(1500, seed=6)
    polar_ra, polar_dec = random_sky(200_000, seed=7)
    polar = np.abs(polar_dec) > 86.0  # the rings next to the caps and the caps themselves
    _check_points_in_their_tracts(
        default_map,
        np.concatenate([ra, polar_ra[polar][:1500]]),
        np.concatenate([dec, polar_dec[polar][:1500]]),
    )


def test_overlap_is_at_least_the_configured_width(test_map):
    # Points just beyond a tract's box edge by the overlap along the edge normal are still in it.
    for tract_id in (0, 1, 100, 181, test_map.num_tracts - 1):
        info = test_map.tract(tract_id)
        box_ra, box_dec = box_boundary(info, 64)
        near_ra, near_dec = displaced(box_ra, box_dec, 0.999 * test_map.config.tract_overlap_deg, 8)
        assert info.outer_region.contains(near_ra, near_dec).all()


def box_boundary(info, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Points along the boundary of a tract's inner box (or cap)."""
    lo, hi = info.dec_range
    if info.ra_range is None:
        edge = lo if hi == 90.0 else hi
        return np.linspace(0, 360, count, endpoint=False), np.full(count, edge)
    start, end = info.ra_range
    width = (end - start) % 360
    along = (start + np.linspace(0, width, count)) % 360
    up = np.linspace(lo, hi, count)
    return (
        np.concatenate([along, along, np.full(count, start), np.full(count, end)]),
        np.concatenate([np.full(count, lo), np.full(count, hi), up, up]),
    )


@pytest.mark.parametrize("preset", ["default", "test"])
def test_inner_region_covers_the_box_tightly(preset, default_map, test_map):
    skymap = default_map if preset == "default" else test_map
    height = math.radians(skymap.config.ring_height_deg)
    for tract_id in (0, 1, skymap.num_tracts // 3, skymap.num_tracts // 2, skymap.num_tracts - 1):
        info = skymap.tract(tract_id)
        ra, dec = box_boundary(info, 200)
        assert info.inner_region.contains(ra, dec).all()
        lo, hi = np.radians(info.dec_range)
        if info.ra_range is None:
            box_area = 2 * math.pi * (1 - math.cos(height / 2))
        else:
            width = math.radians((info.ra_range[1] - info.ra_range[0]) % 360)
            box_area = width * abs(math.sin(hi) - math.sin(lo))
        excess = info.inner_region.area_sr / box_area - 1
        # The polygon is a cover: never smaller, and at most a few per cent larger (the chord along
        # the poleward edge); caps and the equatorward edges are within the 1 arcsec tolerance.
        assert 0 <= excess < 0.05
        if info.ra_range is None:
            tolerance = math.radians(INNER_REGION_TOLERANCE_ARCSEC / 3600)
            assert excess < 2 * tolerance / (height / 2) + 1e-9


# -- WCS and patches -------------------------------------------------------------------------


def test_tract_wcs_and_outer_region(default_map):
    for tract_id in (0, 1, 9469, 12345, default_map.num_tracts - 1):
        info = default_map.tract(tract_id)
        x, y = info.wcs.wcs_world2pix([info.center[0]], [info.center[1]], 0)
        np.testing.assert_allclose([x[0], y[0]], info.wcs.wcs.crpix - 1, atol=1e-9)
        assert info.wcs.wcs.crval == pytest.approx(info.center)
        scales = np.abs(np.diag(info.wcs.wcs.cd)) * 3600
        assert scales == pytest.approx([0.2, 0.2], rel=1e-12)
        nx, ny = info.bbox
        assert info.wcs.pixel_shape == (nx, ny)
        assert nx % 2000 == 0 and ny % 2000 == 0 and info.num_patches == (nx // 2000, ny // 2000)
        corner_ra, corner_dec = info.wcs.wcs_pix2world(
            [-0.5, nx - 0.5, nx - 0.5, -0.5], [-0.5, -0.5, ny - 0.5, ny - 0.5], 0
        )
        ra, dec = info.outer_region.vertices_radec()
        sep = angular_separation_deg(ra[:, None], dec[:, None], corner_ra, corner_dec).min(axis=1)
        assert sep.max() * 3600 < 1e-8


@pytest.mark.parametrize("tract_id", [0, 1, 9469, 9475, 18936])
def test_patch_grid_tiles_the_tract(default_map, tract_id):
    info = default_map.tract(tract_id)
    nx, ny = info.num_patches
    border = default_map.config.patch_border
    corners = set()
    for patch_id in range(nx * ny):
        patch = default_map.patch(tract_id, patch_id)
        x, y = patch.index
        assert patch_id == y * nx + x and patch.tract == tract_id
        ix0, iy0, inx, iny = patch.inner_bbox
        assert (ix0, iy0, inx, iny) == (2000 * x, 2000 * y, 2000, 2000)
        corners.add((ix0, iy0))
        x0, y0, w, h = patch.bbox
        assert (x0, y0) == (max(ix0 - border, 0), max(iy0 - border, 0))
        assert (x0 + w, y0 + h) == (
            min(ix0 + inx + border, info.bbox[0]),
            min(iy0 + iny + border, info.bbox[1]),
        )
    # Equal inner boxes on a regular grid whose extent is the tract box: an exact tiling.
    assert corners == {(2000 * i, 2000 * j) for i in range(nx) for j in range(ny)}
    assert info.bbox == (2000 * nx, 2000 * ny)


@pytest.mark.parametrize("tract_id", [0, 1, 9469, 18936, 18937])
def test_patch_wcs_is_the_shifted_tract_wcs(default_map, tract_id):
    info = default_map.tract(tract_id)
    rng = np.random.default_rng(tract_id)
    nx, ny = info.num_patches
    for patch_id in rng.choice(nx * ny, 4, replace=False):
        patch = default_map.patch(tract_id, int(patch_id))
        x0, y0, w, h = patch.bbox
        assert patch.wcs.pixel_shape == (w, h)
        px = rng.uniform(-0.5, w - 0.5, 500)
        py = rng.uniform(-0.5, h - 0.5, 500)
        ra, dec = patch.wcs.wcs_pix2world(px, py, 0)
        tx, ty = info.wcs.wcs_world2pix(ra, dec, 0)
        qx, qy = patch.wcs.wcs_world2pix(ra, dec, 0)
        np.testing.assert_allclose(qx, tx - x0, rtol=0, atol=1e-9)
        np.testing.assert_allclose(qy, ty - y0, rtol=0, atol=1e-9)
        np.testing.assert_allclose(qx, px, rtol=0, atol=1e-8)
        back_ra, back_dec = patch.wcs.wcs_pix2world(qx, qy, 0)
        assert angular_separation_deg(ra, dec, back_ra, back_dec).max() * 3600 < 1e-6
        # Regions are the exact footprints of the boxes.
        for region, (bx, by, bw, bh) in (
            (patch.outer_region, patch.bbox),
            (patch.inner_region, patch.inner_bbox),
        ):
            bx, by = bx - x0, by - y0
            cra, cdec = patch.wcs.wcs_pix2world(
                [bx - 0.5, bx + bw - 0.5, bx + bw - 0.5, bx - 0.5],
                [by - 0.5, by - 0.5, by + bh - 0.5, by + bh - 0.5],
                0,
            )
            vra, vdec = region.vertices_radec()
            sep = angular_separation_deg(vra[:, None], vdec[:, None], cra, cdec).min(axis=1)
            assert sep.max() * 3600 < 1e-8
        assert patch.outer_region.contains(ra, dec).all()


def test_find_patch_uses_the_inner_boxes(default_map):
    tract_id = 9469
    info = default_map.tract(tract_id)
    rng = np.random.default_rng(11)
    nx, ny = info.bbox
    px, py = rng.uniform(-0.5, nx - 0.5, 20000), rng.uniform(-0.5, ny - 0.5, 20000)
    ra, dec = info.wcs.wcs_pix2world(px, py, 0)
    expected = np.floor((py + 0.5) / 2000).astype(int) * info.num_patches[0] + np.floor(
        (px + 0.5) / 2000
    ).astype(int)
    found = default_map.find_patch(tract_id, ra, dec)
    np.testing.assert_array_equal(found, expected)
    for patch_id in np.unique(found)[:10]:
        sel = found == patch_id
        assert (
            default_map.patch(tract_id, int(patch_id))
            .inner_region.contains(ra[sel], dec[sel])
            .all()
        )
    # Outside the tract box (but in front of the tangent point) and on the far side: -1.
    out_ra, out_dec = info.wcs.wcs_pix2world([-1.0, nx + 1.0], [10.0, 10.0], 0)
    assert default_map.find_patch(tract_id, out_ra, out_dec).tolist() == [-1, -1]
    assert default_map.find_patch(tract_id, (info.center[0] + 180) % 360, -info.center[1]) == -1


# -- region lookups --------------------------------------------------------------------------


def footprints(rng, count: int) -> list:
    """0.2 deg detector footprints: random, across RA = 0, at ring edges and around the poles."""
    shapes = []
    for _ in range(count):
        shapes.append((rng.uniform(0, 360), np.degrees(np.arcsin(rng.uniform(-1, 1)))))
    shapes += [
        (0.05, 10.0),
        (359.95, -40.0),
        (0.0, 0.0),
        (0.0, 89.95),
        (77.0, -89.9),
        (200.0, 88.6),
    ]
    return [rotated_square(ra, dec, 0.2, rng.uniform(0, 90)) for ra, dec in shapes] + [
        Circle(0.0, 45.0, 0.3),
        Circle(10.0, -89.5, 1.0),
    ]


def test_find_tracts_matches_brute_force_on_the_test_map(test_map):
    outers = [test_map.tract(t).outer_region for t in range(test_map.num_tracts)]
    rng = np.random.default_rng(12)
    for region in footprints(rng, 40) + [rotated_square(0.0, 5.625, 3.0, 10.0)]:
        expected = [t for t, outer in enumerate(outers) if outer.overlaps(region)]
        assert test_map.find_tracts(region) == expected
        assert len(expected) >= 1


def test_find_tracts_and_patches_on_the_default_map(default_map):
    boxes = Boxes(default_map.config)
    rng = np.random.default_rng(13)
    regions = footprints(rng, 4)
    for region in regions:
        ra_c, dec_c = region.center
        near = np.flatnonzero(
            angular_separation_deg(boxes.ra_center, boxes.dec_center, ra_c, dec_c) < 6.0
        )
        expected = [int(t) for t in near if default_map.tract(int(t)).outer_region.overlaps(region)]
        found = default_map.find_tracts(region)
        assert found == expected
        # Every tract owning a point of the region is found, and every patch owning one.
        sample = cap_points(region, rng)
        assert set(default_map.find_tract(*sample).tolist()) <= set(found)
        for tract_id in found[:2]:
            info = default_map.tract(tract_id)
            count = info.num_patches[0] * info.num_patches[1]
            brute = [
                p
                for p in range(count)
                if default_map.patch(tract_id, p).outer_region.overlaps(region)
            ]
            patches = default_map.find_patches(tract_id, region)
            assert patches == brute
            owned = default_map.find_patch(tract_id, *sample)
            assert set(owned[owned >= 0].tolist()) <= set(patches)


def cap_points(region, rng, count: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """Random points of a region, drawn uniformly from its bounding circle."""
    ra_c, dec_c = region.center
    p = radec_to_xyz(np.full(count, ra_c), np.full(count, dec_c))
    t = np.cross(p, rng.normal(size=p.shape))
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    d = np.radians(region.radius_deg * np.sqrt(rng.uniform(0, 1, count)))[:, None]
    ra, dec = xyz_to_radec(np.cos(d) * p + np.sin(d) * t)
    inside = region.contains(ra, dec)
    assert inside.sum() > 100
    return ra[inside], dec[inside]


def test_find_patches_matches_brute_force_on_the_test_map(test_map):
    rng = np.random.default_rng(14)
    for region in footprints(rng, 10):
        for tract_id in test_map.find_tracts(region):
            count = math.prod(test_map.tract(tract_id).num_patches)
            brute = [
                p for p in range(count) if test_map.patch(tract_id, p).outer_region.overlaps(region)
            ]
            assert test_map.find_patches(tract_id, region) == brute


def test_lookups_reject_bad_ids(test_map):
    for bad in (-1, test_map.num_tracts, "x", True, 1.5):
        with pytest.raises(InvalidDataIdError, match="tract"):
            test_map.tract(bad)
    with pytest.raises(InvalidDataIdError, match="patch 64 is not in tract 0"):
        test_map.patch(0, 64)
    with pytest.raises(InvalidDataIdError):
        test_map.find_tracts("not a region")


# -- records ---------------------------------------------------------------------------------


def _check_record_types(element: str, record: dict) -> None:
    dim = UNIVERSE[element]
    assert tuple(record) == dim.record_columns
    python_types = {"int": int, "float": float, "str": str}
    for column, value in record.items():
        assert type(value) is python_types[dim.record_dtype(column)], (element, column, value)


def test_dimension_records(default_map):
    chosen = [0, 9469, 18937]
    records = default_map.dimension_records(tracts=chosen)
    json.dumps(records)
    (skymap,) = records["skymap"]
    _check_record_types("skymap", skymap)
    assert skymap["hash"] == default_map.config.hash
    assert SkyMapConfig.from_json(skymap["config"]) == default_map.config
    assert skymap["tract_count"] == 18938
    assert [r["id"] for r in records["tract"]] == chosen
    for record in records["tract"]:
        _check_record_types("tract", record)
        info = default_map.tract(record["id"])
        assert (record["ra"], record["dec"]) == info.center
        assert (record["nx"], record["ny"]) == info.bbox and record["pixel_scale"] == 0.2
        assert record["ring"] == info.ring
        np.testing.assert_array_equal(
            ConvexPolygon.from_json(record["region"]).xyz, info.inner_region.xyz
        )
        np.testing.assert_array_equal(
            ConvexPolygon.from_json(record["outer_region"]).xyz, info.outer_region.xyz
        )
    patches = records["patch"]
    assert len(patches) == sum(math.prod(default_map.tract(t).num_patches) for t in chosen)
    for record in patches[::37]:
        _check_record_types("patch", record)
        patch = default_map.patch(record["tract"], record["id"])
        assert (record["cell_x"], record["cell_y"]) == patch.index
        assert (record["x0"], record["y0"], record["nx"], record["ny"]) == patch.bbox
        np.testing.assert_array_equal(
            ConvexPolygon.from_json(record["region"]).xyz, patch.inner_region.xyz
        )
        np.testing.assert_array_equal(
            ConvexPolygon.from_json(record["outer_region"]).xyz, patch.outer_region.xyz
        )


def test_dimension_records_for_all_tracts_of_the_test_map(test_map):
    records = test_map.dimension_records()
    assert [r["id"] for r in records["tract"]] == list(range(test_map.num_tracts))
    assert len(records["patch"]) == sum(
        math.prod(test_map.tract(t).num_patches) for t in range(test_map.num_tracts)
    )
    assert test_map.dimension_records(tracts=[5], include_patches=False)["patch"] == []
    with pytest.raises(InvalidDataIdError, match="tract"):
        test_map.dimension_records(tracts=[test_map.num_tracts])


def test_skymap_pickles(test_map):
    again = pickle.loads(pickle.dumps(test_map))
    assert again.config == test_map.config
    ra, dec = random_sky(1000, seed=15)
    np.testing.assert_array_equal(again.find_tract(ra, dec), test_map.find_tract(ra, dec))


def test_find_tract_speed(default_map):
    ra, dec = random_sky(1_000_000, seed=16)
    start = time.perf_counter()
    default_map.find_tract(ra, dec)
    assert time.perf_counter() - start < 3.0
