"""Tests of repo.regions: convex spherical polygons and circles against exact answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from astropy.wcs import WCS

from repo.errors import DimensionRecordError, DrpError
from repo.regions import (
    Circle,
    ConvexPolygon,
    angular_separation_deg,
    radec_to_xyz,
    xyz_to_radec,
)


def tan_square(ra: float, dec: float, half_width: float, angle: float = 0.0) -> ConvexPolygon:
    """A square of side 2 * half_width (deg, in the tangent plane) centred on (ra, dec)."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [1.0, 1.0]
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    wcs.wcs.cd = np.array([[-c, s], [s, c]]) * half_width
    wcs.wcs.set()
    x, y = np.array([-1.0, 1.0, 1.0, -1.0]), np.array([-1.0, -1.0, 1.0, 1.0])
    return ConvexPolygon.from_radec(*wcs.wcs_pix2world(x, y, 0))


def lonlat_quad(ra0: float, ra1: float, dec0: float, dec1: float) -> ConvexPolygon:
    return ConvexPolygon.from_radec([ra0, ra1, ra1, ra0], [dec0, dec0, dec1, dec1])


# -- coordinates -----------------------------------------------------------------------------


def test_radec_xyz_round_trip_and_ranges():
    rng = np.random.default_rng(0)
    ra = rng.uniform(-720, 720, 1000)
    dec = rng.uniform(-90, 90, 1000)
    xyz = radec_to_xyz(ra, dec)
    np.testing.assert_allclose(np.linalg.norm(xyz, axis=1), 1.0, atol=1e-15)
    ra2, dec2 = xyz_to_radec(xyz)
    assert ra2.min() >= 0.0 and ra2.max() < 360.0
    np.testing.assert_allclose(dec2, dec, atol=1e-12)
    np.testing.assert_allclose(angular_separation_deg(ra, dec, ra2, dec2), 0.0, atol=1e-11)
    assert xyz_to_radec(radec_to_xyz(360.0, 0.0))[0] == 0.0
    np.testing.assert_allclose(radec_to_xyz(123.0, 90.0), [0, 0, 1], atol=1e-16)


def test_angular_separation_is_accurate_at_small_and_large_angles():
    assert angular_separation_deg(10.0, 20.0, 10.0, 20.0 + 1e-9) == pytest.approx(1e-9, rel=1e-6)
    assert angular_separation_deg(0.0, 0.0, 180.0, 0.0) == pytest.approx(180.0, abs=1e-12)
    assert angular_separation_deg(359.5, 0.0, 0.5, 0.0) == pytest.approx(1.0, abs=1e-12)


# -- polygons --------------------------------------------------------------------------------


def test_octant_area_and_containment():
    octant = ConvexPolygon.from_radec([0, 90, 0], [0, 0, 90])
    assert octant.area_sr == pytest.approx(math.pi / 2, rel=1e-14)
    assert octant.contains([45, 100, 45, 350], [45, 10, 89.99, 10]).tolist() == [
        True,
        False,
        True,
        False,
    ]
    assert octant.dec_range() == pytest.approx((0.0, 90.0))


@pytest.mark.parametrize(("a", "b"), [(0.1, 0.1), (0.3, 0.05), (1.0, 1.0), (0.002, 0.004)])
def test_area_of_gnomonic_rectangle_matches_solid_angle_formula(a, b):
    # Vertices (1, ±a, ±b) normalized: solid angle 4 asin(ab / sqrt((1 + a^2)(1 + b^2))).
    xyz = np.array([[1, -a, -b], [1, a, -b], [1, a, b], [1, -a, b]], dtype=float)
    poly = ConvexPolygon(xyz)
    expected = 4 * math.asin(a * b / math.sqrt((1 + a * a) * (1 + b * b)))
    assert poly.area_sr == pytest.approx(expected, rel=1e-12)


def test_orientation_is_normalized():
    ra, dec = [10, 11, 11, 10], [5, 5, 6, 6]
    ccw = ConvexPolygon.from_radec(ra, dec)
    cw = ConvexPolygon.from_radec(ra[::-1], dec[::-1])
    # Stored counter-clockwise from outside: every edge normal points to the inside.
    for poly in (ccw, cw):
        v = poly.xyz
        assert np.all(np.einsum("ij,ij->i", np.cross(v, np.roll(v, -1, 0)), np.roll(v, -2, 0)) > 0)
        assert poly.contains(10.5, 5.5) and not poly.contains(12.0, 5.5)
    np.testing.assert_array_equal(np.sort(ccw.vertices_radec()[0]), np.sort(cw.vertices_radec()[0]))
    assert ccw.area_sr == pytest.approx(cw.area_sr, rel=1e-15)


def test_contains_is_vectorized_and_boundary_inclusive():
    poly = lonlat_quad(10, 11, 5, 6)
    assert poly.contains(10.5, 5.5) is True
    grid = poly.contains(np.full((3, 4), 10.5), np.linspace(4, 7, 12).reshape(3, 4))
    assert grid.shape == (3, 4)
    ra, dec = poly.vertices_radec()
    assert poly.contains(ra, dec).all()
    # Meridian edges are great circles: a point on one is inside, just beyond it is outside.
    assert poly.contains(10.0, 5.5) and not poly.contains(10.0 - 1e-9, 5.5)


def test_polygon_across_ra_zero():
    square = tan_square(0.0, 0.0, 0.5)
    assert square.contains([359.6, 0.4, 0.0, 180.0, 1.0], [0.0, 0.0, -0.4, 0.0, 0.0]).tolist() == [
        True,
        True,
        True,
        False,
        False,
    ]
    ra, _ = square.vertices_radec()
    assert sorted(np.round(ra, 6)) == pytest.approx([0.5, 0.5, 359.5, 359.5], abs=1e-3)


def test_polygon_around_a_pole():
    cap = ConvexPolygon.from_radec([0, 90, 180, 270], [89, 89, 89, 89])
    assert cap.contains(123.0, 90.0)
    # The edge from RA 0 to RA 90 at dec 89 peaks at atan(tan 89 / cos 45) = 89.2929 at RA 45.
    peak = math.degrees(math.atan(math.tan(math.radians(89)) / math.cos(math.radians(45))))
    assert cap.contains(45.0, peak + 1e-7) and not cap.contains(45.0, peak - 1e-7)
    assert cap.dec_range() == pytest.approx((89.0, 90.0), abs=1e-12)
    assert cap.center[1] == pytest.approx(90.0)


def test_dec_range_includes_great_circle_bulge():
    quad = lonlat_quad(0, 60, 10, 20)
    top = math.degrees(math.atan(math.tan(math.radians(20)) / math.cos(math.radians(30))))
    lo, hi = quad.dec_range()
    assert lo == pytest.approx(10.0, abs=1e-12)
    assert hi == pytest.approx(top, abs=1e-12)
    south = lonlat_quad(0, 60, -20, -10)
    assert south.dec_range() == pytest.approx((-top, -10.0), abs=1e-12)


def test_bounding_circle_contains_polygon():
    rng = np.random.default_rng(1)
    poly = tan_square(200.0, -45.0, 0.3, angle=20.0)
    circle = poly.bounding_circle
    ra, dec = poly.vertices_radec()
    assert circle.contains(ra, dec).all()
    # Random points of the polygon are in the circle.
    pts_ra = rng.uniform(199, 201, 20000)
    pts_dec = rng.uniform(-45.6, -44.4, 20000)
    inside = poly.contains(pts_ra, pts_dec)
    assert inside.sum() > 1000
    assert circle.contains(pts_ra[inside], pts_dec[inside]).all()
    assert poly.radius_deg == pytest.approx(0.3 * math.sqrt(2), rel=1e-3)


@pytest.mark.parametrize(
    ("ra", "dec", "message"),
    [
        ([0, 1], [0, 0], "at least 3"),
        ([0, 1, 0.5, 1, 0], [0, 0, 0.5, 1, 1], "not convex"),
        ([0, 1, 1, 0], [0, 1, 0, 1], "not convex"),  # a bow tie
        ([0, 0, 1], [0, 0, 1], "degenerate"),
        ([0, 120, 240], [0, 0, 0], "whole sphere"),
        ([0, 1, 1], [0, 0, 91], "outside"),
        ([0, 1, np.nan], [0, 0, 1], "finite"),
    ],
)
def test_bad_polygons_are_rejected(ra, dec, message):
    with pytest.raises(DrpError, match=message):
        ConvexPolygon.from_radec(ra, dec)


def test_json_round_trip_is_exact():
    poly = tan_square(359.9, 62.3, 0.1, angle=33.0)
    text = poly.to_json()
    assert " " not in text
    pairs = json.loads(text)
    assert len(pairs) == 4 and all(len(p) == 2 for p in pairs)
    again = ConvexPolygon.from_json(text)
    np.testing.assert_array_equal(again.xyz, poly.xyz)
    assert ConvexPolygon.from_json(pairs).to_json() == text


@pytest.mark.parametrize(
    "text", ["not json", "[[1,2],[3,4]]", '{"a": 1}', "[[0,0],[1,0],[0.5,0.5],[1,1],[0,1]]"]
)
def test_from_json_rejects_bad_regions(text):
    with pytest.raises(DimensionRecordError, match="region"):
        ConvexPolygon.from_json(text)


def test_from_pixel_box_is_exact_for_tan():
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [0.2, -30.0]
    wcs.wcs.crpix = [1000.5, 2000.5]
    wcs.wcs.cd = [[-0.2 / 3600, 0], [0, 0.2 / 3600]]
    wcs.wcs.set()
    poly = ConvexPolygon.from_pixel_box(wcs, (0, 0, 2000, 4000))
    ra, dec = wcs.wcs_pix2world([-0.5, 1999.5, 1999.5, -0.5], [-0.5, -0.5, 3999.5, 3999.5], 0)
    got_ra, got_dec = poly.vertices_radec()
    assert (
        angular_separation_deg(np.sort(got_ra), np.sort(got_dec), np.sort(ra), np.sort(dec)).max()
        < 1e-10
    )
    # Pixel edges are great circles: just inside every edge is in, just outside is out.
    x = np.array([-0.49, 1999.49, 1000.0, 1000.0, -0.51, 1999.51, 1000.0, 1000.0])
    y = np.array([2000.0, 2000.0, -0.49, 3999.49, 2000.0, 2000.0, -0.51, 3999.51])
    r, d = wcs.wcs_pix2world(x, y, 0)
    assert poly.contains(r, d).tolist() == [True] * 4 + [False] * 4


# -- overlaps --------------------------------------------------------------------------------


def test_overlaps_known_cases():
    wide = lonlat_quad(-1, 1, -0.1, 0.1)
    tall = lonlat_quad(-0.1, 0.1, -1, 1)
    # A plus sign: no vertex of either is inside the other; only the edges cross.
    assert not wide.contains(*tall.vertices_radec()).any()
    assert not tall.contains(*wide.vertices_radec()).any()
    assert wide.overlaps(tall) and tall.overlaps(wide)
    assert not wide.overlaps(lonlat_quad(1.5, 2, -0.1, 0.1))
    assert wide.overlaps(lonlat_quad(-0.5, 0.5, -0.05, 0.05))  # inside
    assert wide.overlaps(lonlat_quad(1, 2, -0.1, 0.1))  # shares an edge
    assert wide.overlaps(lonlat_quad(359.5, 359.9, 0.0, 0.05))  # across RA = 0
    assert not wide.overlaps(lonlat_quad(180, 181, 0, 1))


def cap_samples(circle: Circle, count: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Uniform random points in a circle, in a frame rotated onto its centre."""
    r = math.radians(circle.radius_deg)
    cos_t = rng.uniform(math.cos(r), 1.0, count)
    phi = rng.uniform(0, 2 * math.pi, count)
    sin_t = np.sqrt(1 - cos_t**2)
    local = np.stack([cos_t, sin_t * np.cos(phi), sin_t * np.sin(phi)], axis=1)
    ra0, dec0 = np.radians(circle.center)
    # Rotate x -> centre: by -dec about y, then by ra about z.
    rot_y = np.array(
        [[math.cos(dec0), 0, -math.sin(dec0)], [0, 1, 0], [math.sin(dec0), 0, math.cos(dec0)]]
    )
    rot_z = np.array(
        [[math.cos(ra0), -math.sin(ra0), 0], [math.sin(ra0), math.cos(ra0), 0], [0, 0, 1]]
    )
    return xyz_to_radec(local @ (rot_z @ rot_y).T)


def test_cap_samples_helper_is_uniform_in_the_circle():
    rng = np.random.default_rng(3)
    circle = Circle(10.0, 70.0, 0.2)
    ra, dec = cap_samples(circle, 5000, rng)
    sep = angular_separation_deg(ra, dec, 10.0, 70.0)
    assert sep.max() <= 0.2 and np.median(sep) == pytest.approx(0.2 / math.sqrt(2), rel=0.05)


def test_overlaps_agrees_with_dense_sampling():
    rng = np.random.default_rng(7)
    positives = negatives = 0
    for _ in range(150):
        a = tan_square(
            rng.uniform(-0.5, 0.5) % 360, rng.uniform(59.5, 60.5), 0.4, rng.uniform(0, 90)
        )
        b = tan_square(
            rng.uniform(-0.5, 0.5) % 360, rng.uniform(59.5, 60.5), 0.05, rng.uniform(0, 90)
        )
        ra, dec = cap_samples(b.bounding_circle, 20000, rng)
        shared = bool(np.any(a.contains(ra, dec) & b.contains(ra, dec)))
        assert a.overlaps(b) == shared == b.overlaps(a)
        positives += shared
        negatives += not shared
    assert positives > 20 and negatives > 20


# -- circles ---------------------------------------------------------------------------------


def test_circle_contains_is_precise_for_tiny_radii():
    circle = Circle(359.9999, -89.0, 1.0 / 3600)
    dra = 1.0 / 3600 / math.cos(math.radians(89.0))
    # Points due east at 0.999 and 1.001 arcsec (along a parallel, nearly a great circle here).
    ra = (359.9999 + np.array([0.999, 1.001]) * dra) % 360
    assert circle.contains(ra, [-89.0, -89.0]).tolist() == [True, False]
    assert circle.contains(359.9999, -89.0) is True
    assert circle.area_sr == pytest.approx(math.pi * math.radians(1 / 3600) ** 2, rel=1e-9)


def test_circle_overlaps_polygons_and_circles():
    square = lonlat_quad(-0.5, 0.5, -0.5, 0.5)  # edge at ra = 0.5 is a meridian
    # Distance from (1.0, 0) to the meridian edge at ra 0.5 is 0.5 deg.
    assert Circle(1.0, 0.0, 0.5 + 1e-9).overlaps(square)
    assert not Circle(1.0, 0.0, 0.5 - 1e-9).overlaps(square)
    # Near a corner the nearest point is the vertex.
    corner_distance = float(angular_separation_deg(1.0, 1.0, 0.5, 0.5))
    assert Circle(1.0, 1.0, corner_distance + 1e-9).overlaps(square)
    assert not Circle(1.0, 1.0, corner_distance - 1e-9).overlaps(square)
    assert Circle(0.0, 0.0, 0.01).overlaps(square)  # circle inside the polygon
    assert Circle(0.0, 0.0, 5.0).overlaps(square)  # polygon inside the circle
    assert square.overlaps(Circle(359.8, 0.0, 0.1))  # across RA = 0
    assert Circle(0, 0, 1).overlaps(Circle(2, 0, 1.0 + 1e-9))
    assert not Circle(0, 0, 1).overlaps(Circle(2, 0, 1.0 - 1e-9))


def test_circle_rejects_bad_input():
    with pytest.raises(DrpError, match="radius"):
        Circle(0, 0, -1)
    with pytest.raises(DrpError, match="outside"):
        Circle(0, 95, 1)
    with pytest.raises(DrpError, match="single centre"):
        Circle([0, 1], [0, 1], 1)
