"""Tests of the aperture correction against the simulator's true star fluxes.

The image: a star field (40 isolated stars of 16.5-18.5 mag plus the survey's galaxies) on a
tiny-preset detector, reduced by the project's ISR with the camera's true calibrations, minus the
true sky (``simulated.isr_with_true_calibrations``); its PSF fitted by
:func:`stages.characterize.psf_determination.determine_psf`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from astropy.table import Table
from scipy.spatial import cKDTree
from simulated import isr_with_true_calibrations

from repo.errors import DrpError
from repo.psf import GaussianPsf
from stages.characterize.psf_determination import determine_psf, optical_field
from stages.characterize.psf_model import MoffatField, OpticalAtmospherePsf
from stages.measure.aperture_correction import (
    ApertureCorrection,
    ApertureCorrectionConfig,
    apply_aperture_correction,
    measure_aperture_correction,
)
from stages.measure.measurement import detect_and_measure
from stages.simulate import SurveyConfig, make_plan, make_sky

SEED = 5


def star_field(plan, sky, visit, detector, n=40, seed=0):
    """The survey's galaxies plus ``n`` stars of 16.5-18.5 mag at least 30 pixels apart."""
    rng = np.random.default_rng(seed)
    size = plan.camera.detector(detector).nx
    positions: list[np.ndarray] = []
    while len(positions) < n:
        p = rng.uniform(14, size - 15, 2)
        if all(np.hypot(*(p - q)) > 30.0 for q in positions):
            positions.append(p)
    x, y = np.transpose(positions)
    c = visit.conditions
    ra, dec = plan.camera.pixel_to_sky(detector, x, y, c.true_ra, c.true_dec, c.true_rotation)
    stars = Table(sky.stars[:n], copy=True)
    stars["ra"], stars["dec"] = ra, dec
    stars["pm_ra"] = stars["pm_dec"] = 0.0
    mags = rng.uniform(16.5, 18.5, n)
    for band in "gri":
        stars[f"mag_{band}"] = mags
    stars["is_variable"] = False
    return dataclasses.replace(
        sky, stars=stars, transients=sky.transients[:0], asteroids=sky.asteroids[:0]
    )


@pytest.fixture(scope="module")
def field():
    """(exposure with its fitted PSF, truth, true Moffat index) of a visit with beta 4.5."""
    config = SurveyConfig.from_preset("tiny", seed=SEED)
    plan = make_plan(config)
    sky = make_sky(config, plan)
    visit = next(v for v in plan.visits if v.conditions.moffat_beta == 4.5)
    exposure, truth, _ = isr_with_true_calibrations(plan, star_field(plan, sky, visit, 0), visit, 0)
    optical = optical_field(plan.camera, 0, visit.band, exposure.shape)
    catalog = detect_and_measure(exposure)
    exposure.psf = determine_psf(exposure, catalog, optical).psf
    return exposure, truth


def with_psf(exposure, psf):
    return dataclasses.replace(exposure, psf=psf)


def star_flux_ratios(catalog: Table, truth: Table, column: str = "psfFlux") -> np.ndarray:
    """``column`` / true flux of the bright (S/N > 100) true stars."""
    good = ~np.asarray(catalog["flag_psfFlux"]) & (catalog["psfFlux"] / catalog["psfFluxErr"] > 100)
    sources = catalog[good]
    dist, idx = cKDTree(np.c_[truth["x"], truth["y"]]).query(np.c_[sources["x"], sources["y"]])
    matched = truth[idx]
    star = (dist < 1.0) & (np.asarray(matched["source_type"]) == "star")
    return np.asarray(sources[column])[star] / np.asarray(matched["flux_electrons"])[star]


def wrong_index_psf(psf: OpticalAtmospherePsf, beta: float) -> OpticalAtmospherePsf:
    """The same fitted model with another Moffat index (same FWHM and ellipticity)."""
    atmosphere = MoffatField(beta, psf.atmosphere.coeffs, psf.width, psf.height)
    return OpticalAtmospherePsf(atmosphere, psf.optical, psf.kernel_size, psf.grid_spacing)


def test_correction_restores_true_fluxes_when_the_psf_profile_is_wrong(field):
    """A Moffat index of 3.5 where the sky had 4.5 (the failure once seen on the demo), with the
    same FWHM, makes PSF fluxes 5% too high here (FWHM 5.4 pixels); the aperture correction
    brings them within 0.8% of truth. What is left is the wrong model's wing beyond the
    12-pixel aperture (0.74% of the flux against 0.24% for the true profile)."""
    exposure, truth = field
    wrong = with_psf(exposure, wrong_index_psf(exposure.psf, 3.5))
    catalog = detect_and_measure(wrong)
    before = np.median(star_flux_ratios(catalog, truth))
    assert before > 1.03  # the wrong wing costs percents
    correction = measure_aperture_correction(catalog, wrong.psf, wrong.shape)
    assert correction.applied and correction.n_stars >= 15
    corrected = apply_aperture_correction(catalog, correction)
    after = np.median(star_flux_ratios(corrected, truth))
    assert after == pytest.approx(1.0, abs=0.008)
    factor = np.asarray(corrected["psfFluxApCorr"])
    assert factor == pytest.approx(after / before, rel=1e-3)
    summary = correction.summary()
    assert summary["aperture_correction_mag"] == pytest.approx(-2.5 * math.log10(factor[0]))
    assert 0 < summary["aperture_correction_err_mag"] < 2e-3
    assert correction.enclosed == pytest.approx(
        wrong.psf.enclosed_fraction(0.5 * (wrong.shape[1] - 1), 0.5 * (wrong.shape[0] - 1), 12.0)
    )


def test_correction_is_small_when_the_psf_is_right(field):
    """With the fitted model the correction is at the mmag level and fluxes stay at truth."""
    exposure, truth = field
    catalog = detect_and_measure(exposure)
    correction = measure_aperture_correction(catalog, exposure.psf, exposure.shape)
    assert abs(correction.summary()["aperture_correction_mag"]) < 3e-3
    corrected = apply_aperture_correction(catalog, correction)
    assert np.median(star_flux_ratios(corrected, truth)) == pytest.approx(1.0, abs=0.003)
    assert 0.995 < correction.enclosed < 1.0


def test_spatial_fit_follows_a_gradient(field):
    """A degree-1 correction recovers a PSF-flux error that varies linearly over the detector."""
    exposure, _ = field
    catalog = detect_and_measure(exposure)
    x = np.asarray(catalog["x"], float)
    tilt = 1.0 + 0.03 * (x / (exposure.shape[1] - 1) - 0.5)
    catalog["psfFlux"] = np.asarray(catalog["psfFlux"]) * tilt
    config = ApertureCorrectionConfig(degree=1)
    correction = measure_aperture_correction(catalog, exposure.psf, exposure.shape, config)
    assert correction.degree == 1
    factor, _ = correction.factor(np.array([0.0, exposure.shape[1] - 1.0]), np.array([50.0, 50.0]))
    assert factor[0] / factor[1] == pytest.approx(1.015 / 0.985, rel=4e-3)


def test_enclosed_fraction_of_models(field):
    exposure, _ = field
    psf = exposure.psf
    centre = 0.5 * (psf.width - 1)
    inner = psf.enclosed_fraction(centre, centre, 6.0)
    outer = psf.enclosed_fraction(centre, centre, 12.0)
    assert 0.9 < inner < outer < 1.0
    # The model counts its wing beyond the kernel; the kernel-image sum cannot.
    assert psf.enclosed_fraction(centre, centre, 40.0) < 1.0
    gaussian = GaussianPsf(2.0, size=61)
    for radius in (2.0, 4.0, 8.0):
        expected = 1.0 - math.exp(-(radius**2) / (2 * 2.0**2))
        assert gaussian.enclosed_fraction(0, 0, radius) == pytest.approx(expected, abs=0.01)


def test_too_few_stars_give_the_identity(field):
    exposure, _ = field
    catalog = detect_and_measure(exposure)
    config = ApertureCorrectionConfig(min_stars=10_000)
    correction = measure_aperture_correction(catalog, exposure.psf, exposure.shape, config)
    assert not correction.applied
    corrected = apply_aperture_correction(catalog, correction)
    assert np.array_equal(corrected["psfFlux"], catalog["psfFlux"])
    assert (corrected["psfFluxApCorr"] == 1.0).all()
    off = ApertureCorrectionConfig(enabled=False)
    assert not measure_aperture_correction(catalog, exposure.psf, exposure.shape, off).applied


def test_bad_input_is_a_clear_error(field):
    exposure, _ = field
    catalog = detect_and_measure(exposure)
    with pytest.raises(DrpError, match="ap10Flux"):
        measure_aperture_correction(
            catalog, exposure.psf, exposure.shape, ApertureCorrectionConfig(radius=10.0)
        )
    corrected = apply_aperture_correction(
        catalog, ApertureCorrection.identity(12.0, *exposure.shape[::-1])
    )
    with pytest.raises(DrpError, match="already"):
        apply_aperture_correction(corrected, ApertureCorrection.identity(12.0, 10, 10))
    for bad in ({"radius": 0.0}, {"degree": -1}, {"min_stars": 0}):
        with pytest.raises(DrpError):
            ApertureCorrectionConfig(**bad)
