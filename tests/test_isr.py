"""Tests of the master calibrations and ISR against the simulator's truth (tiny preset)."""

from __future__ import annotations

import numpy as np
import pytest
import sep
from astropy.io import fits
from scipy import ndimage

from repo.errors import DrpError
from repo.formatters.fits import read_exposure, write_exposure
from stages.isr.calibration_products import (
    CalibrationProduct,
    clipped_mean,
    combine_bias,
    combine_dark,
    combine_defects,
    combine_flat,
    normalize_flats,
)
from stages.isr.correction import IsrConfig, amplifier_readout, parse_section, run_isr
from stages.simulate import (
    SurveyConfig,
    make_plan,
    make_sky,
    simulate_calibration_frames,
    simulate_raw,
)
from stages.simulate.render import sky_image
from stages.simulate.truth import visit_sources

SEED = 11
#: A visit of the seed-11 tiny survey whose detector 0 holds saturated stars with bleed trails.
VISIT = 20251013002


@pytest.fixture(scope="module")
def survey():
    config = SurveyConfig.from_preset("tiny", seed=SEED)
    plan = make_plan(config)
    return config, plan, make_sky(config, plan)


def _frames(plan, kind, detector, band=None):
    n = {"bias": plan.config.n_bias, "dark": plan.config.n_dark, "flat": plan.config.n_flat}
    return [simulate_calibration_frames(plan, kind, detector, band, i) for i in range(n[kind])]


@pytest.fixture(scope="module")
def masters(survey):
    """Master bias, dark and r flat of detector 0."""
    _, plan, _ = survey
    camera = plan.camera
    bias = combine_bias(_frames(plan, "bias", 0), camera)
    dark = combine_dark(_frames(plan, "dark", 0), bias, camera)
    flat = combine_flat(_frames(plan, "flat", 0, "r"), bias, dark, camera)
    return bias, dark, flat


@pytest.fixture(scope="module")
def calexp(survey, masters):
    _, plan, sky = survey
    bias, dark, flat = masters
    raw, truth, masks = simulate_raw(plan, sky, VISIT, 0)
    exposure = run_isr(raw, plan.camera, bias, dark, flat, combine_defects(dark, flat))
    return exposure, raw, truth, masks


def _blank_sky(plan, sky, visit_id, detector, masks, exposure):
    """Pixels far from every source (on or near the detector) and cosmic ray, unmasked.

    The exclusion radius grows with the source's flux (12 pixels, 40 for bright stars).
    """
    sources = visit_sources(plan, sky, plan.visit(visit_id), detector)
    shape = exposure.shape
    near = np.zeros(shape, dtype=bool)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    for x, y, flux in zip(sources["x"], sources["y"], sources["flux_electrons"], strict=True):
        radius = 12.0 if flux < 2e5 else 40.0
        x0, x1 = int(max(x - radius, 0)), int(min(x + radius + 1, shape[1]))
        y0, y1 = int(max(y - radius, 0)), int(min(y + radius + 1, shape[0]))
        if x0 >= x1 or y0 >= y1:
            continue
        box = (slice(y0, y1), slice(x0, x1))
        near[box] |= np.hypot(xx[box] - x, yy[box] - y) < radius
    near |= ndimage.binary_dilation(masks["cosmic_ray"] | masks["saturated"], iterations=3)
    return ~near & (exposure.mask == 0)


def test_parse_section_and_errors():
    assert parse_section("[1:128,1:256]") == (slice(0, 256), slice(0, 128))
    assert parse_section("[129:160, 257:272]") == (slice(256, 272), slice(128, 160))
    with pytest.raises(DrpError, match="malformed"):
        parse_section("1:128,1:256")
    with pytest.raises(DrpError, match="ascending"):
        parse_section("[10:1,1:5]")
    with pytest.raises(DrpError, match="lacks DETSEC, GAIN"):
        amplifier_readout(fits.Header({"DATASEC": "[1:4,1:4]", "BIASSEC": "[5:6,1:4]"}))


def test_clipped_mean_rejects_outliers():
    rng = np.random.default_rng(1)
    stack = rng.normal(100.0, 1.0, (5, 50, 50))
    stack[2, 10, 10] += 1000.0  # a cosmic ray in one frame
    mean, variance = clipped_mean(stack, np.ones((50, 50)))
    clean = np.delete(stack[:, 10, 10], 2).mean()
    assert mean[10, 10] == pytest.approx(clean)
    assert variance[10, 10] == pytest.approx(1 / 4)
    assert variance[0, 0] == pytest.approx(1 / 5)


def test_master_bias_matches_bias_structure(survey, masters):
    _, plan, _ = survey
    bias, _, _ = masters
    camera = plan.camera
    structure = camera.bias_structure(0).astype(float)
    gains = np.repeat([a.gain for a in camera.detector(0).amplifiers], 128)[None, :]
    # The smoothed parallel overscan removes each amplifier's top-row pattern on large scales:
    # compare the column-to-column structure after removing each amplifier's mean.
    expected = structure * gains
    resid = bias.image - expected
    for amp in camera.detector(0).amplifiers:
        part = resid[:, amp.x0 : amp.x0 + amp.width]
        noise = amp.read_noise / np.sqrt(plan.config.n_bias)
        assert np.std(part - np.median(part)) < 1.3 * noise
        expected_var = amp.read_noise**2 / plan.config.n_bias
        part_var = bias.variance[:, amp.x0 : amp.x0 + amp.width]
        assert np.median(part_var) == pytest.approx(expected_var, rel=1e-5)
        assert np.mean(part_var > expected_var * 1.01) < 1e-3  # few pixels lost a frame
    assert bias.metadata["NFRAMES"] == plan.config.n_bias


def test_master_dark_and_hot_pixels(survey, masters):
    _, plan, _ = survey
    _, dark, _ = masters
    truth = plan.camera.dark_current(0)
    hot = truth > 0.5
    # Dark current recovered to within its noise (read noise / DARKTIME / sqrt(n)).
    resid = (dark.image - truth)[~hot]
    assert abs(np.median(resid)) < 0.005
    assert np.std(resid) < 0.05
    found = dark.defects
    assert (found & hot).sum() >= 0.99 * hot.sum()
    assert (found & ~hot).sum() <= 0.01 * hot.sum() + 1


def test_flat_residual_under_half_percent(survey, masters):
    _, plan, _ = survey
    _, _, flat = masters
    truth = plan.camera.flat(0, "r")
    good = ~plan.camera.defects(0)
    ratio = flat.image / truth
    ratio /= np.median(ratio[good])
    # Pixel-level residual (dominated by the flat frames' photon noise) and large-scale residual.
    assert np.std(ratio[good]) < 0.005
    binned = np.where(good, ratio, np.nan).reshape(16, 16, 16, 16)
    assert np.nanmax(np.abs(np.nanmean(binned, axis=(1, 3)) - 1.0)) < 0.001
    assert flat.metadata["FLATSCAL"] == pytest.approx(
        np.median(flat.image * flat.metadata["FLATSCAL"])
    )
    assert np.median(flat.image) == pytest.approx(1.0, abs=1e-6)


def test_focal_plane_flat_normalization_keeps_vignetting(survey, masters):
    _, plan, _ = survey
    bias, dark, _ = masters
    camera = plan.camera
    flats = []
    for det in (0, 1):
        b = combine_bias(_frames(plan, "bias", det), camera) if det else bias
        d = combine_dark(_frames(plan, "dark", det), b, camera) if det else dark
        flats.append(combine_flat(_frames(plan, "flat", det, "g"), b, d, camera, normalize=False))
    normalized = normalize_flats(flats)
    ratios = [n.image / camera.flat(k, "g") for k, n in enumerate(normalized)]
    medians = [np.median(r[~camera.defects(k)]) for k, r in enumerate(ratios)]
    # One constant for the whole focal plane: the detectors agree to 0.1%.
    assert medians[0] == pytest.approx(medians[1], rel=1e-3)
    all_pixels = np.concatenate([n.image.ravel() for n in normalized])
    assert np.median(all_pixels) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(DrpError, match="normalize=False"):
        normalize_flats(normalized)


def test_calibration_product_fits_round_trip(masters):
    _, dark, _ = masters
    back = CalibrationProduct.from_hdulist(fits.HDUList(dark.to_hdulist()))
    assert np.array_equal(back.image, dark.image)
    assert np.array_equal(back.defects, dark.defects)
    assert back.metadata["KIND"] == "dark"
    assert back.metadata["NHOT"] == dark.metadata["NHOT"]


def test_wrong_frames_are_rejected(survey, masters):
    _, plan, _ = survey
    bias, _, _ = masters
    with pytest.raises(DrpError, match="not a dark"):
        combine_dark(_frames(plan, "bias", 0), bias, plan.camera)
    with pytest.raises(DrpError, match="no raw bias"):
        combine_bias([], plan.camera)
    with pytest.raises(DrpError, match="several detectors"):
        combine_bias([_frames(plan, "bias", 0)[0], _frames(plan, "bias", 1)[0]])


def _expected_sky_variance(plan, exposure, flat, n_bias):
    """Sky + dark + read noise in electrons, through the master flat, plus the master bias."""
    camera = plan.camera
    visit = plan.visit(VISIT)
    truth_flat = camera.flat(0, visit.band).astype(float)
    sky = sky_image(camera, visit, 0) * truth_flat
    dark = camera.dark_current(0) * exposure.metadata["DARKTIME"]
    read = np.repeat(
        [exposure.metadata["RDNOISE0"], exposure.metadata["RDNOISE1"]], exposure.shape[1] // 2
    )[None, :]
    return (sky + dark + read**2 * (1.0 + 1.0 / n_bias)) / flat.image.astype(float) ** 2, sky


def test_sky_noise_and_variance_plane(survey, masters, calexp):
    _, plan, sky = survey
    _, _, flat = masters
    exposure, _, truth, masks = calexp
    expected_var, sky_e = _expected_sky_variance(plan, exposure, flat, plan.config.n_bias)
    blank = _blank_sky(plan, sky, VISIT, 0, masks, exposure)
    assert blank.sum() > 20000
    resid = exposure.image - sky_e / flat.image
    # The calibrated sky level is right (to a tenth of the noise) ...
    assert abs(np.mean(resid[blank])) < 0.1 * np.sqrt(np.mean(expected_var[blank]))
    # ... its noise matches the expectation within 2% ...
    ratio = np.std(resid[blank] / np.sqrt(expected_var[blank]))
    assert ratio == pytest.approx(1.0, abs=0.02)
    # ... and so does the variance plane, within 2%.
    measured = np.std(resid[blank] / np.sqrt(exposure.variance[blank]))
    assert measured == pytest.approx(1.0, abs=0.02)


#: A visit whose detector 1 holds bright, isolated, unsaturated stars.
FLUX_VISIT = 20251017002


def test_isolated_star_flux_matches_truth(survey):
    _, plan, sky = survey
    camera = plan.camera
    bias = combine_bias(_frames(plan, "bias", 1), camera)
    dark = combine_dark(_frames(plan, "dark", 1), bias, camera)
    flat = combine_flat(_frames(plan, "flat", 1, "r"), bias, dark, camera)
    raw, truth, _ = simulate_raw(plan, sky, FLUX_VISIT, 1)
    exposure = run_isr(raw, camera, bias, dark, flat, combine_defects(dark, flat))
    sky_e = sky_image(camera, plan.visit(FLUX_VISIT), 1) * camera.flat(1, "r")
    image = (exposure.image - sky_e / flat.image).astype(np.float64)
    xs, ys = np.asarray(truth["x"]), np.asarray(truth["y"])
    ratios = []
    for row in truth[(truth["source_type"] == "star") & ~truth["saturated"]]:
        x, y = float(row["x"]), float(row["y"])
        if np.sort(np.hypot(xs - x, ys - y))[1] < 25 or not (15 < x < 240 and 15 < y < 240):
            continue
        if row["flux_electrons"] < 8e4:
            continue
        box = (slice(int(y) - 13, int(y) + 14), slice(int(x) - 13, int(x) + 14))
        if exposure.mask[box].any():  # a bad column through the star: not a clean test
            continue
        flux, err, _ = sep.sum_circle(
            image, [x], [y], 12.0, var=exposure.variance.astype(np.float64)
        )
        # Truth electrons land on the true flat; the calexp divides by the master flat.
        iy, ix = int(round(y)), int(round(x))
        expected = row["flux_electrons"] * row["response"] / flat.image[iy, ix]
        assert abs(flux[0] - expected) < 3 * err[0] + 0.003 * expected
        ratios.append((flux[0] / expected, row["flux_electrons"]))
    assert len(ratios) == 2
    # The brightest (S/N ~ 800) within 1%, as asked; the other within its noise (above).
    ratio, flux_e = max(ratios, key=lambda r: r[1])
    assert flux_e > 5e5 and ratio == pytest.approx(1.0, abs=0.01)


def test_saturation_and_bleed_trails_masked(calexp):
    exposure, _, truth, masks = calexp
    sat = (exposure.mask & exposure.bit("SAT")) > 0
    assert truth["saturated"].sum() >= 2
    assert masks["saturated"].sum() > 30
    assert np.all(sat[masks["saturated"]])
    # Bleed trails: the truth's saturated pixels extend along columns beyond the star cores.
    assert (sat & ~masks["saturated"]).sum() <= 0.2 * masks["saturated"].sum()


def test_bad_pixels_masked_and_interpolated(calexp):
    exposure, _, _, masks = calexp
    bad = (exposure.mask & exposure.bit("BAD")) > 0
    assert np.array_equal(bad, masks["bad"])
    intrp = (exposure.mask & exposure.bit("INTRP")) > 0
    assert np.array_equal(intrp, masks["bad"] & ~((exposure.mask & exposure.bit("SAT")) > 0))
    # Interpolated bad columns look like their neighbours (no hot column left).
    assert np.max(exposure.image[bad]) < np.percentile(exposure.image, 99.9) * 2


def test_metadata_and_wcs(survey, calexp):
    _, plan, _ = survey
    exposure, raw, _, _ = calexp
    meta = exposure.metadata
    amps = plan.camera.detector(0).amplifiers
    assert meta["GAIN0"] == amps[0].gain and meta["RDNOISE1"] == amps[1].read_noise
    assert meta["EXPTIME"] == plan.visit(VISIT).exposure_time
    assert meta["LINCORR"] is True and meta["VISIT"] == VISIT and meta["DETECTOR"] == 0
    assert exposure.image.dtype == np.float32 and exposure.variance.dtype == np.float32
    # The WCS is the raw's approximate one: the reported pointing at the optical axis.
    visit = plan.visit(VISIT)
    x, y = plan.camera.sky_to_pixel(
        0, visit.ra, visit.dec, visit.ra, visit.dec, visit.rotation_angle
    )
    ra, dec = exposure.wcs.all_pix2world([[float(x), float(y)]], 0)[0]
    assert ra == pytest.approx(visit.ra, abs=1e-7) and dec == pytest.approx(visit.dec, abs=1e-7)
    # The calexp's FITS form (the repository's formatter) keeps all of it.
    back = read_exposure(write_exposure(exposure), "calexp")
    assert back.metadata == meta
    assert np.array_equal(back.image, exposure.image) and np.array_equal(back.mask, exposure.mask)
    assert back.wcs.all_pix2world([[float(x), float(y)]], 0)[0] == pytest.approx([ra, dec])


def test_isr_rejects_mismatched_calibrations(survey, masters, calexp):
    _, plan, _ = survey
    bias, dark, flat = masters
    _, raw, _, _ = calexp
    with pytest.raises(DrpError, match="master bias has shape"):
        run_isr(raw, plan.camera, bias.image[:10], dark, flat)
    bad_flat = flat.image.copy()
    bad_flat[0, 0] = 0.0
    with pytest.raises(DrpError, match="non-positive"):
        run_isr(raw, plan.camera, bias, dark, bad_flat)
    with pytest.raises(DrpError, match="odd"):
        IsrConfig(overscan_smoothing=4)


def test_linearity_correction_matters(survey, masters, calexp):
    """Without the linearity correction a bright star loses flux at the documented rate."""
    _, plan, _ = survey
    bias, dark, flat = masters
    exposure, raw, _, _ = calexp
    raw_lin = run_isr(raw, plan.camera, bias, dark, flat, config=IsrConfig(linearize=False))
    ratio = raw_lin.image / exposure.image
    bright = (exposure.image > 40000) & ((exposure.mask & exposure.bit("SAT")) == 0)
    assert bright.sum() > 5
    e = exposure.image[bright] * flat.image[bright]
    expected = 1.0 - plan.camera.config.nonlinearity * e / plan.camera.config.full_well
    assert np.allclose(ratio[bright], expected, rtol=2e-3)
