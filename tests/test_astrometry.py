"""Astrometric calibration (stages.calibrate.astrometry, stages.calibrate.refcat) against the simulator's truth.

Source catalogs are made from the truth tables of the default-preset survey with realistic
centroid noise (sigma = FWHM / (2.355 S/N) per axis, S/N from the star's electrons and the sky
in a seeing disc), so these tests run in well under a second per detector without rendering.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.table import Table
from astropy.wcs import WCS
from scipy.spatial import cKDTree
from simulated import noisy_sources, star_truth

from repo.errors import DrpError
from repo.instruments.simcam import inverse_gnomonic
from stages.calibrate.astrometry import (
    AstrometryConfig,
    add_sky_coordinates,
    calibrate_astrometry,
    fit_order,
    fit_tan_sip,
    sky_residuals_mas,
)
from stages.calibrate.refcat import apply_proper_motion, mjd_to_epoch, select_region
from stages.simulate import SurveyConfig, make_plan, make_sky
from stages.simulate.sky import star_positions
from stages.simulate.truth import visit_sources

SATURATION_ELECTRONS = 1.5e6  # total electrons of a star that fills the central pixel


@pytest.fixture(scope="module")
def survey():
    config = SurveyConfig.from_preset("default", seed=5, pointing_error_arcsec=0.0)
    plan = make_plan(config)
    return config, plan, make_sky(config, plan)


def noisy_catalog(plan, sky, visit, detector: int, rng: np.random.Generator):
    """(sources, truth) of the stars on a detector, with centroid and flux noise."""
    truth, electrons, noise, fwhm_px = star_truth(plan, sky, visit, detector)
    snr = electrons / noise
    sigma = fwhm_px / 2.355 / snr
    keep = (snr > 5) & (electrons < SATURATION_ELECTRONS)
    sources = noisy_sources(truth, electrons, noise, sigma, rng)
    truth["snr"] = snr
    return sources[keep], truth[keep]


def offset_wcs(camera, visit, detector: int, offset_arcsec: float, angle_deg: float, rot: float):
    """The camera WCS of a pointing displaced from the truth by an offset and a rotation."""
    c = visit.conditions
    a = math.radians(angle_deg)
    shift = offset_arcsec / 3600.0
    ra, dec = inverse_gnomonic(shift * math.cos(a), shift * math.sin(a), c.true_ra, c.true_dec)
    return camera.wcs(detector, float(ra), float(dec), c.true_rotation + rot)


@pytest.mark.parametrize("offset_arcsec", [0.0, 30.0, 45.0])
def test_wcs_against_truth_survives_pointing_error(survey, offset_arcsec):
    config, plan, sky = survey
    rng = np.random.default_rng(11)
    bright_resid, wcs_resid, used = [], [], []
    for k, visit in enumerate(plan.visits[:3]):
        for detector in range(config.n_detectors):
            sources, truth = noisy_catalog(plan, sky, visit, detector, rng)
            angle = 90.0 * k + 30.0 * detector
            initial = offset_wcs(plan.camera, visit, detector, offset_arcsec, angle, rot=0.25)
            result = calibrate_astrometry(
                sources, sky.refcat, initial, (config.size, config.size), mjd_to_epoch(visit.mjd)
            )
            assert result.order == 1  # the camera's distortion model is the prior
            assert result.offset_arcsec == pytest.approx(offset_arcsec, abs=3.0)
            used.append(result.n_used)
            m = result.matches
            # Every pair is a true pair: the matched reference star is the source's own star.
            assert np.array_equal(truth["id"][m["source_index"]], m["ref_id"])
            assert np.array_equal(sky.refcat["id"][m["ref_index"]], m["ref_id"])
            bright = truth["snr"] > 100
            dxi, deta = sky_residuals_mas(
                result.wcs, sources["x"][bright], sources["y"][bright],
                truth["ra"][bright], truth["dec"][bright],
            )  # fmt: skip
            bright_resid.append(np.hypot(dxi, deta))
            dxi, deta = sky_residuals_mas(
                result.wcs, truth["x"], truth["y"], truth["ra"], truth["dec"]
            )
            wcs_resid.append(np.hypot(dxi, deta))
    bright_rms = math.sqrt(np.mean(np.concatenate(bright_resid) ** 2))
    wcs_rms = math.sqrt(np.mean(np.concatenate(wcs_resid) ** 2))
    # Calibrated positions of bright stars vs truth: the bar is 10 mas (aim 5).
    assert bright_rms < 5.0, bright_rms
    # The WCS itself, evaluated at the true pixel positions: a few mas at most.
    assert wcs_rms < 3.0, wcs_rms
    assert min(used) >= 15


def test_rms_reflects_centroid_noise(survey):
    config, plan, sky = survey
    visit = plan.visits[1]
    sources, _ = noisy_catalog(plan, sky, visit, 0, np.random.default_rng(2))
    initial = offset_wcs(plan.camera, visit, 0, 20.0, 10.0, rot=0.0)
    epoch = mjd_to_epoch(visit.mjd)
    clean = calibrate_astrometry(sources, sky.refcat, initial, (config.size,) * 2, epoch)
    noisy = sources.copy()
    noisy["x"] += np.random.default_rng(3).normal(0.0, 0.2, len(noisy))  # 40 mas per axis
    worse = calibrate_astrometry(noisy, sky.refcat, initial, (config.size,) * 2, epoch)
    assert clean.rms_mas < 15.0
    assert 30.0 < worse.rms_mas < 60.0 + clean.rms_mas
    assert np.all(np.abs(clean.matches["dxi_mas"][clean.matches["used"]]) < 200.0)


def test_proper_motion_matches_simulator(survey):
    _, plan, sky = survey
    mjd = plan.visits[-1].mjd
    moved = apply_proper_motion(sky.refcat, mjd_to_epoch(mjd))
    stars = sky.stars[np.isin(sky.stars["id"], sky.refcat["id"])]
    ra, dec = star_positions(stars, mjd)
    # The catalog adds its own position and proper-motion errors: compare with the truth moved.
    catalog_err = np.hypot(moved["ra_err"], 0.0) * 5  # 5 sigma, mas
    dra = (moved["ra"] - ra) * np.cos(np.radians(dec)) * 3.6e6
    ddec = (moved["dec"] - dec) * 3.6e6
    assert np.all(np.abs(dra) < catalog_err + 1e-6)
    assert np.all(np.abs(ddec) < catalog_err + 1e-6)
    # And the motion applied is exactly pm * dt.
    dt = mjd_to_epoch(mjd) - 2016.0
    assert np.allclose((moved["dec"] - sky.refcat["dec"]) * 3.6e6, sky.refcat["pm_dec"] * dt)
    assert np.all(moved["epoch"] == pytest.approx(mjd_to_epoch(mjd)))
    assert np.all(moved["dec_err"] >= sky.refcat["dec_err"])


def test_epoch_conversion_and_region():
    assert mjd_to_epoch(51544.5) == 2000.0
    assert mjd_to_epoch(57388.5) == pytest.approx(2016.0)
    table = Table(
        {
            "id": [1, 2], "ra": [10.0, 10.0], "dec": [0.0, 0.02], "ra_err": [1.0, 1.0],
            "dec_err": [1.0, 1.0], "pm_ra": [0.0, 0.0], "pm_dec": [0.0, 0.0],
            "pm_ra_err": [0.0, 0.0], "pm_dec_err": [0.0, 0.0], "epoch": [2016.0, 2016.0],
        }
    )  # fmt: skip
    assert list(select_region(table, 10.0, 0.0, 0.01)["id"]) == [1]
    with pytest.raises(DrpError, match="lacks the columns"):
        select_region(table[["id", "ra"]], 10.0, 0.0, 1.0)


def test_fit_order_follows_star_count():
    assert [fit_order(n, 3) for n in (1, 5, 6, 17, 18, 29, 30, 500)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert fit_order(500, 1) == 1
    with pytest.raises(DrpError):
        fit_order(0, 3)


def test_sip_fit_recovers_distortion_without_prior(survey):
    """A plain TAN start: the SIP terms must come from the fit (the camera has 3 px at the edge)."""
    config, plan, sky = survey
    camera, visit = plan.camera, plan.visits[0]
    c = visit.conditions
    true_wcs = camera.wcs(3, c.true_ra, c.true_dec, c.true_rotation)
    header = true_wcs.to_header(relax=False)  # TAN part only, no SIP
    for key in ("CTYPE1", "CTYPE2"):
        header[key] = header[key].replace("-SIP", "")
    tan = WCS(header)
    gy, gx = np.mgrid[0 : config.size : 64, 0 : config.size : 64]
    x, y = gx.ravel().astype(float), gy.ravel().astype(float)
    ra, dec = camera.pixel_to_sky(3, x, y, c.true_ra, c.true_dec, c.true_rotation)
    for order, bound in ((1, 50.0), (3, 0.5)):
        fitted = fit_tan_sip(x, y, ra, dec, tan, order, (config.size, config.size))
        dxi, deta = sky_residuals_mas(fitted, x, y, ra, dec)
        rms = math.sqrt(np.mean(dxi**2 + deta**2))
        assert rms < bound, (order, rms)
    assert rms < 0.5
    # The linear fit cannot absorb the distortion: it must have been a real test.
    linear = fit_tan_sip(x, y, ra, dec, tan, 1, (config.size, config.size))
    dxi, _ = sky_residuals_mas(linear, x, y, ra, dec)
    assert np.max(np.abs(dxi)) > 20.0
    # The inverse polynomials are written too: world -> pixel round trip.
    px, py = fitted.all_world2pix(ra, dec, 0)
    assert np.max(np.hypot(px - x, py - y)) < 1e-3
    assert fitted.sip is not None and fitted.to_header(relax=True)["A_ORDER"] == 3


@pytest.mark.parametrize("from_header", [False, True])
def test_linear_fit_on_a_sip_prior_applies_the_fitted_cd(survey, from_header):
    """Order 1 on top of the camera's SIP: the fitted CD matrix must be used, also when the
    prior WCS was read from a FITS header (PC + CDELT form), where WCSLIB ignores a CD set on
    it (a calexp read from disk once kept the prior's linear terms, 11 mas instead of 7)."""
    config, plan, _ = survey
    camera, c = plan.camera, plan.visits[0].conditions
    truth = camera.wcs(2, c.true_ra, c.true_dec, c.true_rotation)
    prior = camera.wcs(2, c.true_ra, c.true_dec, c.true_rotation + 0.05)  # 3 arcmin of rotation
    if from_header:
        prior = WCS(prior.to_header(relax=True))
        assert not prior.wcs.has_cd()
    gy, gx = np.mgrid[0 : config.size : 128, 0 : config.size : 128]
    x, y = gx.ravel().astype(float), gy.ravel().astype(float)
    ra, dec = truth.all_pix2world(x, y, 0)
    before = np.hypot(*sky_residuals_mas(prior, x, y, ra, dec)).max()
    fitted = fit_tan_sip(x, y, ra, dec, prior, 1, (config.size, config.size))
    after = np.hypot(*sky_residuals_mas(fitted, x, y, ra, dec)).max()
    assert before > 200.0
    assert after < 1.0, after
    assert fitted.sip is not None


def test_shift_only_fit_keeps_the_projection(survey):
    config, plan, _ = survey
    c = plan.visits[0].conditions
    camera = plan.camera
    wcs = camera.wcs(0, c.true_ra, c.true_dec, c.true_rotation)
    x, y = np.array([100.0, 900.0]), np.array([500.0, 200.0])
    ra, dec = wcs.all_pix2world(x, y, 0)
    moved = fit_tan_sip(x, y, ra + 1.0 / 3600.0, dec - 0.5 / 3600.0, wcs, 0, (1024, 1024))
    dxi, deta = sky_residuals_mas(moved, x, y, ra + 1.0 / 3600.0, dec - 0.5 / 3600.0)
    assert np.max(np.hypot(dxi, deta)) < 0.1
    assert np.allclose(moved.wcs.cd, wcs.wcs.cd) and moved.sip is not None


def test_errors_on_bad_input(survey):
    config, plan, sky = survey
    visit = plan.visits[0]
    wcs = offset_wcs(plan.camera, visit, 0, 0.0, 0.0, 0.0)
    with pytest.raises(DrpError, match="no column 'x'"):
        calibrate_astrometry(Table({"y": [1.0]}), sky.refcat, wcs, (1024, 1024))
    with pytest.raises(DrpError, match="at least 3"):
        calibrate_astrometry(Table({"x": [1.0], "y": [2.0]}), sky.refcat, wcs, (1024, 1024))
    with pytest.raises(DrpError, match="lacks the columns"):
        calibrate_astrometry(Table({"x": [1.0], "y": [2.0]}), sky.refcat["id", "ra"], wcs, (9, 9))
    # Sources with no counterpart anywhere near: the search must give up, not guess.
    rng = np.random.default_rng(0)
    far = offset_wcs(plan.camera, visit, 0, 600.0, 0.0, 0.0)
    sources, _ = noisy_catalog(plan, sky, visit, 0, rng)
    with pytest.raises(DrpError, match="match"):
        calibrate_astrometry(
            sources, sky.refcat, far, (1024, 1024), config=AstrometryConfig(min_matches=8)
        )


def test_sky_coordinates_columns(survey):
    config, plan, sky = survey
    visit = plan.visits[0]
    sources, truth = noisy_catalog(plan, sky, visit, 1, np.random.default_rng(4))
    c = visit.conditions
    wcs = plan.camera.wcs(1, c.true_ra, c.true_dec, c.true_rotation)
    out = add_sky_coordinates(sources, wcs)
    assert out["coord_ra"].unit == "deg"
    bright = truth["snr"] > 200
    dra = (out["coord_ra"][bright] - truth["ra"][bright]) * np.cos(np.radians(c.true_dec))
    assert np.max(np.abs(dra)) * 3.6e6 < 20.0
    assert "coord_ra" not in sources.colnames


def test_end_to_end_with_sep_on_a_rendered_image(survey):
    """Render a detector (GalSim, Poisson noise), extract with sep, calibrate from 30 arcsec off."""
    sep = pytest.importorskip("sep")
    from stages.calibrate.photometry import calibrate_photometry
    from stages.simulate.render import render_sources, sky_image

    config, plan, sky = survey
    visit, detector = plan.visits[1], 1
    truth = visit_sources(plan, sky, visit, detector)
    scene = np.ascontiguousarray(sky_image(plan.camera, visit, detector), dtype=np.float64)
    render_sources(plan.camera, visit, detector, truth, scene)
    image = np.random.default_rng(0).poisson(np.clip(scene, 0.0, None)).astype(float)
    data = image - sep.Background(image, bw=64, bh=64).back()
    err = np.sqrt(np.clip(scene, 1.0, None))
    objects = sep.extract(data, 5.0, err=err, minarea=5)
    sigma = visit.conditions.seeing / plan.camera.config.pixel_scale_arcsec / 2.355
    x, y, wflag = sep.winpos(data, objects["x"], objects["y"], np.full(len(objects), sigma))
    flux, flux_err, _ = sep.sum_circle(data, x, y, 4.0 * 2.355 * sigma, err=err)
    good = (wflag == 0) & (objects["flag"] == 0) & (objects["peak"] < 0.7 * 9e4)
    snr = flux / flux_err
    sources = Table(
        {"x": x, "y": y, "xErr": sigma * math.sqrt(2) / snr, "yErr": sigma * math.sqrt(2) / snr,
         "psfFlux": flux, "psfFluxErr": flux_err}
    )[good]  # fmt: skip
    initial = offset_wcs(plan.camera, visit, detector, 30.0, 0.0, rot=0.2)
    result = calibrate_astrometry(
        sources, sky.refcat, initial, (config.size, config.size), mjd_to_epoch(visit.mjd)
    )
    stars = truth[np.asarray(truth["on_detector"]) & (truth["source_type"] == "star")]
    tree_d, tree_i = cKDTree(np.column_stack([sources["x"], sources["y"]])).query(
        np.column_stack([stars["x"], stars["y"]]), distance_upper_bound=1.5
    )
    found = np.isfinite(tree_d)
    matched, stars = sources[tree_i[found]], stars[found]
    bright = matched["psfFlux"] / matched["psfFluxErr"] > 100
    assert bright.sum() >= 10
    dxi, deta = sky_residuals_mas(
        result.wcs, matched["x"][bright], matched["y"][bright],
        stars["ra"][bright], stars["dec"][bright],
    )  # fmt: skip
    assert math.sqrt(np.mean(dxi**2 + deta**2)) < 5.0  # issue: 10 mas, aim 5
    used = result.matches[result.matches["used"]]
    zero_point = calibrate_photometry(
        sources, sky.refcat, used["source_index"], used["ref_index"], visit.band
    )
    # A 4-FWHM aperture loses a few mmag of a Moffat's flux: the bound leaves room for that.
    assert abs(zero_point.zero_point - visit.conditions.zero_point) < 0.005


def _write_shard(path, **overrides):
    n = 3
    columns = {
        "source_id": np.array([11, 12, 13], dtype=np.int64),
        "ra": np.array([110.1, 110.2, 110.3]),
        "dec": np.array([23.9, 24.0, 24.1]),
        "ra_error": np.full(n, 0.05),
        "dec_error": np.full(n, 0.04),
        "pmra": np.array([5.0, np.nan, -3.0]),
        "pmdec": np.array([-2.0, np.nan, 1.0]),
        "pmra_error": np.full(n, 0.1),
        "pmdec_error": np.full(n, 0.1),
        "ref_epoch": np.full(n, 2015.5),
        "phot_g_mean_mag": np.array([12.0, 19.0, 20.5], dtype=np.float32),
        "phot_bp_mean_mag": np.array([12.4, 0.0, np.nan], dtype=np.float32),
        "phot_rp_mean_mag": np.array([11.5, 18.2, 19.9], dtype=np.float32),
        "phot_variable_flag": np.array([False, True, False]),
        "astrometric_excess_noise": np.zeros(n, dtype=np.float32),
    }
    columns.update(overrides)
    Table(columns).write(path, format="fits", overwrite=True)


def test_read_gaia_shards(tmp_path):
    from stages.calibrate.refcat import read_gaia_shards

    _write_shard(tmp_path / "chunk-00001.fits")
    _write_shard(tmp_path / "chunk-00002.fits", source_id=np.array([13, 14, 15]))
    refcat = read_gaia_shards([tmp_path / "chunk-00001.fits", tmp_path / "chunk-00002.fits"])
    assert list(refcat["id"]) == [11, 12, 13, 14, 15]  # star 13 read once
    assert list(refcat["pm_ra"][:2]) == [5.0, 0.0]  # no proper motion: 0 +- 10 mas/yr
    assert refcat["pm_dec_err"][1] == 10.0 and refcat["pm_dec_err"][0] == pytest.approx(0.1)
    assert np.isnan(refcat["phot_bp_mean_mag"][1])  # EDR3 writes 0 for "no magnitude"
    assert refcat["phot_bp_rp"][0] == pytest.approx(0.9, abs=1e-5)
    assert list(refcat["phot_variable_flag"][:3]) == [False, True, False]
    assert refcat["epoch"][0] == 2015.5
    moved = apply_proper_motion(refcat, 2025.5)
    assert (moved["dec"][0] - refcat["dec"][0]) * 3.6e6 == pytest.approx(-20.0)
    assert moved["dec_err"][1] == pytest.approx(math.hypot(0.04, 100.0))
    Table({"ra": [1.0]}).write(tmp_path / "bad.fits")
    with pytest.raises(DrpError, match="not a Gaia shard"):
        read_gaia_shards([tmp_path / "bad.fits"])
    (tmp_path / "broken.fits").write_bytes(b"SIMPLE  =  T" + b" " * 100)
    with pytest.raises(DrpError, match="broken.fits"):
        read_gaia_shards([tmp_path / "broken.fits"])
    with pytest.raises(DrpError, match="no Gaia shard"):
        read_gaia_shards([])


def test_tiny_preset_from_the_reported_pointing():
    """The demo's preset: few reference stars per detector (5-7), the raw headers' WCS."""
    config = SurveyConfig.from_preset("tiny")
    plan = make_plan(config)
    sky = make_sky(config, plan)
    rng = np.random.default_rng(9)
    rms = []
    for visit in plan.visits:
        for detector in range(config.n_detectors):
            sources, truth = noisy_catalog(plan, sky, visit, detector, rng)
            header_wcs = plan.camera.wcs(detector, visit.ra, visit.dec, visit.rotation_angle)
            result = calibrate_astrometry(
                sources, sky.refcat, header_wcs, (config.size,) * 2, mjd_to_epoch(visit.mjd)
            )
            assert result.n_used >= 3
            dxi, deta = sky_residuals_mas(
                result.wcs, truth["x"], truth["y"], truth["ra"], truth["dec"]
            )
            rms.append(math.sqrt(np.mean(dxi**2 + deta**2)))
    assert max(rms) < 10.0, rms
