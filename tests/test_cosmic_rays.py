"""Tests of cosmic-ray detection and repair against the simulator's truth (tiny preset)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from simulated import master_calibrations

from repo.errors import DrpError
from repo.exposure import Exposure
from stages.characterize.cosmic_rays import (
    CosmicRayConfig,
    estimate_psf_sigma,
    find_cosmic_rays,
    psf_pair_ratios,
    reject_cosmic_rays,
    repair_cosmic_rays,
)
from stages.isr.calibration_products import combine_defects
from stages.isr.correction import run_isr
from stages.simulate import SurveyConfig, make_plan, make_sky, simulate_raw
from stages.simulate.render import sky_image
from stages.simulate.truth import visit_sources

#: Five times the default rate, so that a few raws hold ~1000 cosmic-ray pixels.
CR_RATE = 10.0


@pytest.fixture(scope="module")
def processed():
    """ISR-processed raws of detector 0 in every visit, with truth and the true PSF sigma."""
    config = SurveyConfig.from_preset("tiny", seed=11, cosmic_ray_rate=CR_RATE)
    plan = make_plan(config)
    sky = make_sky(config, plan)
    camera = plan.camera

    bias, dark, flats = master_calibrations(plan, 0)
    out = []
    for visit in plan.visits:
        raw, truth, masks = simulate_raw(plan, sky, visit.id, 0)
        flat = flats[visit.band]
        exposure = run_isr(raw, camera, bias, dark, flat, combine_defects(dark, flat))
        optical = camera.optical_psf_params(0, 128, 128, visit.band)[0]
        fwhm = np.hypot(visit.conditions.seeing / 0.2, optical)
        out.append(
            {
                "visit": visit,
                "exposure": exposure,
                "masks": masks,
                "flat": flat,
                "fwhm": float(fwhm),
                "optical_sigma": float(optical / 2.3548),
                "sources": visit_sources(plan, sky, visit, 0),
                "sky": sky_image(camera, visit, 0) * camera.flat(0, visit.band) / flat.image,
            }
        )
    return out


def _copy(exposure: Exposure) -> Exposure:
    return Exposure(exposure.image.copy(), exposure.mask.copy(), exposure.variance.copy())


def _strong_cr(item) -> np.ndarray:
    """Truth cosmic-ray pixels whose deposit is above 5 sigma (not saturated or bad)."""
    exposure = item["exposure"]
    sigma = np.sqrt(exposure.variance)
    deposit = item["masks"]["cosmic_ray_electrons"] / item["flat"].image
    unusable = (exposure.mask & exposure.bits("SAT", "BAD")) != 0
    return item["masks"]["cosmic_ray"] & (deposit > 5 * sigma) & ~unusable


def _star_cores(item, max_mag: float = 22.0) -> np.ndarray:
    """Pixels within one FWHM of stars brighter than ``max_mag``, away from truth cosmic rays."""
    shape = item["exposure"].shape
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    src = item["sources"]
    stars = src[(src["source_type"] == "star") & (src["mag"] < max_mag)]
    core = np.zeros(shape, dtype=bool)
    for x, y in zip(stars["x"], stars["y"], strict=True):
        core |= np.hypot(xx - x, yy - y) < item["fwhm"]
    return core & ~ndimage.binary_dilation(item["masks"]["cosmic_ray"], iterations=1)


def _scores(processed, masks):
    hits = total = false_core = cores = 0
    for item, found in zip(processed, masks, strict=True):
        strong = _strong_cr(item)
        core = _star_cores(item)
        hits += (found & strong).sum()
        total += strong.sum()
        false_core += (found & core).sum()
        cores += core.sum()
    return hits / total, false_core / cores, total, cores


def test_two_pass_rejection_recall_and_star_safety(processed):
    """The pipeline mode: only the optical PSF is known beforehand."""
    found = []
    for item in processed:
        exposure = _copy(item["exposure"])
        mask, sigma = reject_cosmic_rays(exposure, item["optical_sigma"])
        # The PSF size learnt from the image is the true one within 10%.
        assert sigma == pytest.approx(item["fwhm"] / 2.3548, rel=0.10)
        assert np.array_equal((exposure.mask & exposure.bit("CR")) != 0, mask)
        found.append(mask)
    recall, false_rate, total, cores = _scores(processed, found)
    assert total > 600 and cores > 2000
    assert recall >= 0.95
    assert false_rate < 0.001
    # Nearly everything flagged is a real cosmic ray (or touches one).
    flagged = sum(m.sum() for m in found)
    near_truth = sum(
        (m & ndimage.binary_dilation(it["masks"]["cosmic_ray"])).sum()
        for m, it in zip(found, processed, strict=True)
    )
    assert near_truth >= 0.99 * flagged


def test_known_psf_recall(processed):
    found = [find_cosmic_rays(it["exposure"], it["fwhm"] / 2.3548) for it in processed]
    recall, false_rate, _, _ = _scores(processed, found)
    assert recall >= 0.95
    assert false_rate < 0.001


def test_optical_psf_alone_is_safe_but_less_sensitive(processed):
    found = [find_cosmic_rays(it["exposure"], it["optical_sigma"]) for it in processed]
    recall, false_rate, _, _ = _scores(processed, found)
    assert false_rate == 0.0
    assert 0.5 < recall < 0.95


def test_repair_interpolates_to_the_sky(processed):
    item = processed[0]
    exposure = _copy(item["exposure"])
    mask = find_cosmic_rays(exposure, item["fwhm"] / 2.3548)
    n = repair_cosmic_rays(exposure, mask)
    assert n == mask.sum() > 50
    assert np.all(
        (exposure.mask[mask] & exposure.bits("CR", "INTRP")) == exposure.bits("CR", "INTRP")
    )
    # Away from sources, repaired pixels are back at the sky level, within the noise.
    src = item["sources"]
    far = np.ones(exposure.shape, dtype=bool)
    yy, xx = np.mgrid[0 : exposure.shape[0], 0 : exposure.shape[1]]
    for x, y in zip(src["x"], src["y"], strict=True):
        far &= np.hypot(xx - x, yy - y) > 15
    repaired = mask & far
    assert repaired.sum() > 30
    resid = (exposure.image - item["sky"])[repaired] / np.sqrt(exposure.variance[repaired])
    assert abs(np.median(resid)) < 0.5
    assert np.percentile(np.abs(resid), 95) < 3.0
    # Nothing else changed.
    assert np.array_equal(exposure.image[~mask], item["exposure"].image[~mask])
    assert repair_cosmic_rays(exposure, np.zeros(exposure.shape, dtype=bool)) == 0
    with pytest.raises(DrpError, match="shape"):
        repair_cosmic_rays(exposure, mask[:10])


def test_bright_star_never_flagged_single_pixel_always():
    """Synthetic: a noiseless-to-high-S/N Gaussian star and a one-pixel hit."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:64, 0:64]
    sky = 500.0
    sigma = 1.4
    for dx, dy in ((0.0, 0.0), (0.5, 0.5), (0.3, -0.2)):
        star = 5e6 * np.exp(-((xx - 31.0 - dx) ** 2 + (yy - 30.0 - dy) ** 2) / (2 * sigma**2))
        star /= 2 * np.pi * sigma**2
        expected = sky + star
        image = rng.normal(expected, np.sqrt(expected + 25.0))
        image[10, 50] += 3000.0
        exposure = Exposure(
            image.astype(np.float32),
            np.zeros(image.shape, dtype=np.int32),
            (expected + 25.0).astype(np.float32),
        )
        found = find_cosmic_rays(exposure, sigma)
        assert found[10, 50]
        assert not found[20:40, 20:40].any()


def test_saturated_pixels_are_left_alone():
    image = np.full((40, 40), 100.0, dtype=np.float32)
    image[5:30, 20] = 80000.0  # a bleed trail: sharp across, but saturated
    mask = np.zeros(image.shape, dtype=np.int32)
    exposure = Exposure(image, mask, np.full(image.shape, 125.0, dtype=np.float32))
    exposure.mask[5:30, 20] |= exposure.bit("SAT")
    exposure.mask[30, 20] = 0
    image[30, 20] = 20000.0  # the partly filled end of the trail
    assert not find_cosmic_rays(exposure, 1.5).any()


def test_estimate_psf_sigma_without_sources_returns_the_floor():
    rng = np.random.default_rng(1)
    image = rng.normal(100.0, 10.0, (64, 64)).astype(np.float32)
    exposure = Exposure(image, np.zeros((64, 64), np.int32), np.full((64, 64), 100.0, np.float32))
    assert estimate_psf_sigma(exposure, 0.9) == 0.9


def test_bad_parameters():
    with pytest.raises(DrpError, match="PSF sigma"):
        psf_pair_ratios(0.0)
    with pytest.raises(DrpError, match="psf_margin"):
        CosmicRayConfig(psf_margin=1.5)
    with pytest.raises(DrpError, match="grow_iterations"):
        CosmicRayConfig(grow_iterations=-1)
    ratios = psf_pair_ratios(1.0)
    assert ratios[0] == pytest.approx(np.exp(-0.5)) and ratios[2] == pytest.approx(np.exp(-1.0))
