"""Tests of the SimCam instrument model: records, geometry and WCS, optics, sensor, electronics."""

from __future__ import annotations

import math
import warnings

import galsim
import numpy as np
import pytest
from astropy.wcs import WCS

from repo.errors import DrpError, InvalidDataIdError
from repo.instruments.base import get_instrument
from repo.instruments.simcam import FILTERS, SimCam, SimCamConfig, gnomonic, inverse_gnomonic

POINTING = (53.1, -27.8, 37.0)


@pytest.fixture(scope="module")
def camera() -> SimCam:
    return SimCam()


def test_registered_and_records(camera):
    assert isinstance(get_instrument("SimCam"), SimCam)
    records = camera.detector_records()
    assert [r["id"] for r in records] == [0, 1, 2, 3]
    assert [r["name"] for r in records] == ["S00", "S01", "S10", "S11"]
    keys = {
        "instrument",
        "id",
        "name",
        "nx",
        "ny",
        "focal_plane_x",
        "focal_plane_y",
        "orientation",
        "pixel_size",
    }
    assert all(set(r) == keys for r in records)
    # 2x2 grid of 10.24 mm detectors with 1 mm gaps, centred on the optical axis.
    assert sorted({r["focal_plane_x"] for r in records}) == [-5.62, 5.62]
    assert sorted({r["focal_plane_y"] for r in records}) == [-5.62, 5.62]
    assert all(r["pixel_size"] == 10.0 and r["nx"] == 1024 for r in records)
    assert all(abs(r["orientation"]) < 0.1 for r in records)
    filters = camera.physical_filter_records()
    assert filters == [
        {"instrument": "SimCam", "name": f"SimCam-{b}", "band": b} for b in ("g", "r", "i")
    ]
    assert camera.band_records() == [{"name": "g"}, {"name": "i"}, {"name": "r"}]


def test_layout_scales_with_detector_count():
    cam = SimCam(SimCamConfig(n_detectors=6, nx=256, ny=128, n_amps=4))
    assert cam.config.layout == (3, 2)
    xs = sorted({d.focal_plane_x for d in cam.detectors})
    assert xs == pytest.approx([-3.56, 0.0, 3.56])
    amps = cam.detector(5).amplifiers
    assert [a.x0 for a in amps] == [0, 64, 128, 192]
    assert amps[1].sections() == {
        "DATASEC": "[1:64,1:128]",
        "BIASSEC": "[65:96,1:128]",
        "DETSEC": "[65:128,1:128]",
        "PBIASSEC": "[1:64,129:144]",
    }
    assert amps[1].raw_shape == (144, 96)


def test_bad_configuration_and_lookups(camera):
    with pytest.raises(DrpError, match="not divisible"):
        SimCamConfig(nx=1000, n_amps=3)
    with pytest.raises(DrpError, match="n_detectors"):
        SimCamConfig(n_detectors=0)
    with pytest.raises(InvalidDataIdError, match="no detector 4"):
        camera.detector(4)
    with pytest.raises(DrpError, match="no filter 'z'"):
        camera.filter("z")
    assert camera.filter("SimCam-i") is FILTERS["i"]


def test_config_json_round_trip():
    cam = SimCam(SimCamConfig(n_detectors=2, nx=256, ny=256, seed=5))
    again = SimCam.from_json(cam.config_json())
    assert again.config == cam.config
    assert np.array_equal(again.flat(1, "r"), cam.flat(1, "r"))
    assert again.detector(1).amplifiers == cam.detector(1).amplifiers


def test_gnomonic_round_trip():
    rng = np.random.default_rng(1)
    ra = 53.1 + rng.uniform(-0.2, 0.2, 100)
    dec = -27.8 + rng.uniform(-0.2, 0.2, 100)
    xi, eta = gnomonic(ra, dec, 53.1, -27.8)
    ra2, dec2 = inverse_gnomonic(xi, eta, 53.1, -27.8)
    assert np.abs(ra2 - ra).max() < 1e-11 and np.abs(dec2 - dec).max() < 1e-11
    # Standard coordinates: +xi is east (increasing RA).
    assert xi[np.argmax(ra)] > 0


def test_pixel_sky_round_trip_and_orientation(camera):
    x = np.array([0.0, 511.5, 1023.0, 100.25])
    y = np.array([0.0, 511.5, 7.0, 900.75])
    for det in range(4):
        ra, dec = camera.pixel_to_sky(det, x, y, *POINTING)
        x2, y2 = camera.sky_to_pixel(det, ra, dec, *POINTING)
        assert np.abs(x2 - x).max() < 1e-8 and np.abs(y2 - y).max() < 1e-8
    # Rotation 0: +y is north, +x is west; one pixel is 0.2 arcsec.
    ra0, dec0 = camera.pixel_to_sky(0, [500.0, 500.0, 501.0], [500.0, 501.0, 500.0], 53.1, -27.8, 0)
    cos_dec = math.cos(math.radians(dec0[0]))
    assert (dec0[1] - dec0[0]) * 3600 == pytest.approx(0.2, rel=0.01)
    assert (ra0[2] - ra0[0]) * cos_dec * 3600 == pytest.approx(-0.2, rel=0.01)


def test_distortion_is_the_stated_size_at_the_field_corner(camera):
    fx, fy = camera.pixel_to_focal_plane(3, 1023.5, 1023.5)
    ix, iy = camera.undistort(fx, fy)
    shift_px = math.hypot(float(fx - ix), float(fy - iy)) / camera.pixel_mm
    assert shift_px == pytest.approx(camera.config.distortion_edge_px, rel=0.01)
    dx, dy = camera.distort(ix, iy)
    assert abs(float(dx - fx)) < 1e-12 and abs(float(dy - fy)) < 1e-12
    # No distortion on the optical axis.
    assert camera.undistort(0.0, 0.0) == (0.0, 0.0)


def test_tan_sip_header_reproduces_the_exact_model(camera):
    rng = np.random.default_rng(2)
    x = rng.uniform(-0.5, 1023.5, 3000)
    y = rng.uniform(-0.5, 1023.5, 3000)
    for det in range(4):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            wcs = WCS(camera.wcs_header(det, *POINTING))
        ra, dec = camera.pixel_to_sky(det, x, y, *POINTING)
        ra_w, dec_w = wcs.all_pix2world(x, y, 0)
        sep_mas = np.hypot((ra_w - ra) * np.cos(np.radians(dec)), dec_w - dec) * 3.6e6
        assert sep_mas.max() < 0.1
        xb, yb = wcs.all_world2pix(ra, dec, 0)
        assert np.abs(xb - x).max() < 1e-3 and np.abs(yb - y).max() < 1e-3
    # The same WCS without SIP is off by the distortion (pixels) at the corners.
    hdr = camera.wcs_header(3, *POINTING)
    tan = WCS(
        {
            k: hdr[k]
            for k in (
                "CTYPE1",
                "CTYPE2",
                "CRVAL1",
                "CRVAL2",
                "CRPIX1",
                "CRPIX2",
                "CD1_1",
                "CD1_2",
                "CD2_1",
                "CD2_2",
            )
        }
        | {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN"}
    )
    ra, dec = camera.pixel_to_sky(3, 1023.0, 1023.0, *POINTING)
    xt, yt = tan.all_world2pix(ra, dec, 0)
    assert math.hypot(float(xt) - 1023.0, float(yt) - 1023.0) > 2.0


def _moments(profile: galsim.GSObject) -> tuple[float, float, float]:
    image = profile.drawImage(nx=64, ny=64, scale=0.25, method="no_pixel")
    shape = galsim.hsm.FindAdaptiveMom(image)
    return shape.moments_sigma * 0.25, shape.observed_shape.e1, shape.observed_shape.e2


def test_optical_psf_varies_across_the_focal_plane_as_specified(camera):
    cfg = camera.config
    centre_fwhm, ce1, ce2 = camera.optical_psf_params(0, 1023.5 + 5.0, 1023.5 + 5.0, "r")
    # Near the optical axis: the nominal size and no ellipticity.
    assert centre_fwhm * cfg.pixel_scale_arcsec == pytest.approx(cfg.optical_fwhm_arcsec, rel=1e-3)
    assert math.hypot(float(ce1), float(ce2)) < 1e-3
    # At the outer corner of detector 3 (rho = 1): bigger and elongated along the radius (45 deg).
    fwhm, e1, e2 = camera.optical_psf_params(3, 1023.5, 1023.5, "r")
    assert fwhm / centre_fwhm == pytest.approx(1 + cfg.optical_fwhm_growth, rel=1e-3)
    e = math.hypot(float(e1), float(e2))
    assert e == pytest.approx(cfg.optical_e_edge, rel=1e-3)
    assert math.degrees(0.5 * math.atan2(float(e2), float(e1))) == pytest.approx(45.0, abs=0.2)
    # Measured adaptive moments of the drawn profiles agree with the formula.
    s_centre, m1c, m2c = _moments(camera.optical_psf(0, 1028.5, 1028.5, "r"))
    s_corner, m1, m2 = _moments(camera.optical_psf(3, 1023.5, 1023.5, "r"))
    sigma = cfg.optical_fwhm_arcsec / cfg.pixel_scale_arcsec / (2 * math.sqrt(2 * math.log(2)))
    assert s_centre == pytest.approx(sigma, rel=0.01)
    assert s_corner / s_centre == pytest.approx(1 + cfg.optical_fwhm_growth, rel=0.01)
    assert m1 == pytest.approx(float(e1), abs=2e-3) and m2 == pytest.approx(float(e2), abs=2e-3)
    assert abs(m1c) < 2e-3 and abs(m2c) < 2e-3
    # Mid-field on the x axis the elongation is along x (e1 > 0) with a quarter of the edge value.
    fx = 0.5 * camera.field_radius_mm
    x, y = camera.focal_plane_to_pixel(1, fx, 0.0)
    _, e1_mid, e2_mid = camera.optical_psf_params(1, x, y, "r")
    assert float(e1_mid) == pytest.approx(0.25 * cfg.optical_e_edge, rel=0.05)
    # Bluer bands are slightly wider.
    assert camera.optical_psf_params(0, 0, 0, "g")[0] > camera.optical_psf_params(0, 0, 0, "i")[0]


def test_nonlinearity_is_the_documented_quadratic_and_invertible(camera):
    fw = camera.config.full_well
    e = np.array([0.0, 100.0, 1e4, fw])
    measured = camera.apply_nonlinearity(e)
    assert measured[-1] == pytest.approx(fw * (1 - camera.config.nonlinearity))
    assert camera.linearize(measured) == pytest.approx(e, rel=1e-12, abs=1e-9)
    linear = SimCam(SimCamConfig(nonlinearity=0.0))
    assert np.array_equal(linear.apply_nonlinearity(e), e)


def test_flat_field_and_illumination(camera):
    flat = camera.flat(3, "r")
    assert flat.shape == (1024, 1024) and flat.dtype == np.float32
    # Pixel-to-pixel response non-uniformity has the configured rms.
    good = ~camera.defects(3)
    diff = np.diff(np.log(flat.astype(float)), axis=1) / np.sqrt(2)
    diff = diff[good[:, 1:] & good[:, :-1]]
    assert np.std(diff) == pytest.approx(camera.config.prnu, rel=0.02)
    # Vignetting: the outer corner is lower by the configured depth.
    fx, fy = camera.pixel_to_focal_plane(3, 1023.5, 1023.5)
    assert camera.illumination(fx, fy, "r") == pytest.approx(1 - camera.config.vignetting, rel=1e-6)
    assert camera.illumination(0.0, 0.0, "g") == 1.0
    inner = flat[:64, :64].mean()
    outer = flat[-64:, -64:].mean()
    assert outer < inner - 0.05
    # Dead columns respond at 10%, and are in the defect list with the hot pixels.
    defects = camera.defects(3)
    assert defects.sum() >= 1
    cols = np.flatnonzero(defects.sum(axis=0) > 100)
    assert len(cols) == camera.config.n_bad_columns
    dark = camera.dark_current(3)
    assert np.median(dark) == pytest.approx(camera.config.dark_current)
    assert np.all(dark[defects & (dark > 0.5)] > 0.5)


def test_amplifier_electronics_are_fixed_per_camera(camera):
    amps = [a for d in camera.detectors for a in d.amplifiers]
    gains = np.array([a.gain for a in amps])
    assert np.all(np.abs(gains / camera.config.gain_mean - 1) < 0.1)
    assert len(set(gains)) == len(gains)
    for a in amps:
        # SATURATE is below the level a full-well pixel reads at, and within 16 bits.
        full = a.bias_level + camera.apply_nonlinearity(camera.config.full_well) / a.gain
        assert full - 0.05 * camera.config.full_well / a.gain < a.saturation_adu < full < 65535
    assert np.array_equal(camera.bias_structure(0), SimCam().bias_structure(0))
