"""Tests of the PSF model and its determination against the simulator's true PSF.

Calibrated images come from the project's ISR (:func:`stages.isr.correction.run_isr`) with the camera's
true calibrations (bias structure, dark current, flat), minus the true sky, so that these tests
score the PSF code alone. The star fields hold 40 stars of 16.5-18.5 mag at random isolated
positions plus the survey's galaxies.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from scipy.spatial import cKDTree
from simulated import isr_with_true_calibrations

from repo.errors import CorruptDatasetError, DrpError
from repo.formatters.fits import read_exposure, write_exposure
from repo.psf import Psf, adaptive_sigma
from stages.characterize.psf_determination import (
    PsfDeterminationConfig,
    characterize,
    determine_psf,
    optical_field,
    select_psf_stars,
)
from stages.characterize.psf_model import MoffatField, OpticalAtmospherePsf, OpticalField
from stages.measure.measurement import detect_and_measure, measure_psf_fluxes
from stages.measure.moments import adaptive_moments_of_stamps
from stages.simulate import SurveyConfig, make_plan, make_sky, psf_image

SEED = 5


@pytest.fixture(scope="module")
def survey():
    config = SurveyConfig.from_preset("tiny", seed=SEED)
    plan = make_plan(config)
    return plan, make_sky(config, plan)


calibrated = isr_with_true_calibrations


def star_field(plan, sky, visit, detector, n=40, mags=(16.5, 18.5), min_sep=22.0, seed=0):
    """The survey's galaxies plus ``n`` stars at random positions at least ``min_sep`` apart."""
    rng = np.random.default_rng(seed)
    size = plan.camera.detector(detector).nx
    positions: list[np.ndarray] = []
    while len(positions) < n:
        p = rng.uniform(8, size - 9, 2)
        if all(np.hypot(*(p - q)) > min_sep for q in positions):
            positions.append(p)
    x, y = np.transpose(positions)
    c = visit.conditions
    ra, dec = plan.camera.pixel_to_sky(detector, x, y, c.true_ra, c.true_dec, c.true_rotation)
    stars = Table(sky.stars[:n], copy=True)
    stars["ra"], stars["dec"] = ra, dec
    stars["pm_ra"] = stars["pm_dec"] = 0.0
    mags = rng.uniform(*mags, n)
    for band in "gri":
        stars[f"mag_{band}"] = mags
    stars["is_variable"] = False
    return dataclasses.replace(
        sky, stars=stars, transients=sky.transients[:0], asteroids=sky.asteroids[:0]
    )


@pytest.fixture(scope="module")
def fitted(survey):
    """PSF fits on star fields of two visits (Moffat index 3.5 and 4.5), detector 0."""
    plan, sky = survey
    out = []
    for visit in plan.visits[2:4]:
        exposure, truth, _ = calibrated(plan, star_field(plan, sky, visit, 0), visit, 0)
        catalog = detect_and_measure(exposure)
        optical = optical_field(plan.camera, 0, visit.band, exposure.shape)
        out.append((visit, exposure, catalog, truth, determine_psf(exposure, catalog, optical)))
    assert {v.conditions.moffat_beta for v, *_ in out} == {3.5, 4.5}
    return out


def _shape_of(kernels):
    m = adaptive_moments_of_stamps(np.asarray(kernels), 0.0, 0.0, 2.0)
    t = m["ixx"] + m["iyy"]
    size = (m["ixx"] * m["iyy"] - m["ixy"] ** 2) ** 0.25
    return size, (m["ixx"] - m["iyy"]) / t, 2 * m["ixy"] / t


def test_held_out_star_residuals_under_one_percent(fitted):
    for visit, _, _, _, result in fitted:
        summary = result.summary()
        print(f"visit {visit.id}: {summary}")
        assert result.beta == visit.conditions.moffat_beta
        assert result.n_reserved >= 5 and result.n_used >= 20
        assert summary["n_outliers"] == 0  # clean isolated stars: no reserved star left out
        assert not (result.stars["reserved"] & result.stars["used"]).any()
        assert result.size_resid_rms < 0.01
        assert abs(result.size_resid_mean) < 0.005
        assert result.e1_resid_rms < 0.01 and result.e2_resid_rms < 0.01


def test_model_matches_the_true_psf(survey, fitted):
    plan, _ = survey
    for visit, _, _, _, result in fitted:
        psf = result.psf
        stars = result.stars[result.stars["reserved"]]
        model = psf.kernel_images(stars["x"], stars["y"])
        truth = [
            psf_image(plan.camera, visit, 0, x, y, psf.kernel_size)
            for x, y in zip(stars["x"], stars["y"], strict=True)
        ]
        size_m, e1_m, e2_m = _shape_of(model)
        size_t, e1_t, e2_t = _shape_of(truth)
        print(f"visit {visit.id}: model/true size - 1 = {np.round(size_m / size_t - 1, 4)}")
        assert np.abs(size_m / size_t - 1).max() < 0.005
        assert np.abs(e1_m - e1_t).max() < 0.005 and np.abs(e2_m - e2_t).max() < 0.005
        # The wings too: the true PSF's flux within 2 FWHM of the centre is the model's.
        yy, xx = np.mgrid[: psf.kernel_size, : psf.kernel_size] - psf.kernel_size // 2
        core = np.hypot(xx, yy) < 2 * psf.fwhm(128, 128)
        assert (
            np.abs(
                np.sum(model * core, axis=(1, 2)) - np.sum(np.array(truth) * core, axis=(1, 2))
            ).max()
            < 0.003
        )


def test_atmosphere_only_model_without_an_instrument_model(fitted):
    _, exposure, catalog, _, _ = fitted[0]
    result = determine_psf(exposure, catalog, optical_field(object(), 0, "r", exposure.shape))
    assert result.psf.optical is None
    print(f"atmosphere only: {result.summary()}")
    assert result.size_resid_rms < 0.01
    assert result.e1_resid_rms < 0.01 and result.e2_resid_rms < 0.01


def test_star_selection_avoids_galaxies_and_saturated_stars(survey):
    plan, sky = survey
    n_selected = 0
    for visit in plan.visits[:2]:
        exposure, truth, _ = calibrated(plan, sky, visit, 0)
        catalog = detect_and_measure(exposure)
        chosen = catalog[select_psf_stars(catalog, PsfDeterminationConfig(min_snr=30))]
        tree = cKDTree(np.c_[truth["x"], truth["y"]])
        dist, idx = tree.query(np.c_[chosen["x"], chosen["y"]])
        assert (dist < 1.0).all()
        matched = truth[idx]
        assert (matched["source_type"] == "star").all()
        assert not matched["saturated"].any()
        n_selected += len(chosen)
    assert n_selected >= 4


def test_too_few_stars_and_bad_config_are_errors(fitted):
    _, exposure, catalog, _, _ = fitted[0]
    with pytest.raises(DrpError, match="PSF stars"):
        determine_psf(exposure, catalog[:0], None)
    with pytest.raises(DrpError, match="validation_fraction"):
        PsfDeterminationConfig(validation_fraction=1.0)


def test_reserved_stars_are_reproducible(fitted):
    _, exposure, catalog, _, result = fitted[0]
    again = determine_psf(exposure, catalog, result.psf.optical)
    assert list(again.stars["reserved"]) == list(result.stars["reserved"])
    assert again.psf == result.psf


def test_fits_round_trip_is_exact(fitted, tmp_path):
    _, exposure, _, _, result = fitted[0]
    for psf in (result.psf, OpticalAtmospherePsf(result.psf.atmosphere, None, 31, 50.0)):
        hdus = fits.HDUList([fits.PrimaryHDU(), *psf.to_hdus()])
        again = Psf.from_hdus(fits.HDUList.fromstring(_bytes(hdus))[1:])
        assert isinstance(again, OpticalAtmospherePsf) and again == psf
        assert np.array_equal(again.kernel_image(10.5, 200.25), psf.kernel_image(10.5, 200.25))
    calexp = dataclasses.replace(exposure, psf=result.psf)
    data = write_exposure(calexp)
    back = read_exposure(data, "calexp")
    assert back.psf == result.psf
    if shutil.which("fitsverify"):
        path = tmp_path / "calexp.fits"
        path.write_bytes(data)
        check = subprocess.run(["fitsverify", "-q", str(path)], capture_output=True, text=True)
        assert "verification OK" in check.stdout, check.stdout


def test_calexp_with_fitted_psf_reads_in_a_process_that_never_imported_stages(fitted, tmp_path):
    """repo/ cannot import stages/: the PSF HDU names its module (PSFMOD), imported on read."""
    _, exposure, _, _, result = fitted[0]
    path = tmp_path / "calexp.fits"
    path.write_bytes(write_exposure(dataclasses.replace(exposure, psf=result.psf)))
    script = (
        "import sys; from repo.formatters.fits import read_exposure; "
        "assert not any(m.startswith('stages') for m in sys.modules); "
        f"e = read_exposure(open({str(path)!r}, 'rb').read(), 'calexp'); "
        "print(type(e.psf).__module__, round(e.psf.sigma(100.0, 100.0), 6))"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [
        "stages.characterize.psf_model",
        f"{round(result.psf.sigma(100.0, 100.0), 6)}",
    ]


def test_psf_module_names_outside_drp_are_never_imported(fitted):
    hdus = fitted[0][4].psf.to_hdus()
    header = hdus[0].header.copy()
    header["PSFTYPE"] = "NOSUCH"
    header["PSFMOD"] = "os"
    with pytest.raises(CorruptDatasetError, match="unknown PSFTYPE 'NOSUCH'"):
        Psf.from_hdus([fits.ImageHDU(hdus[0].data, header=header), *hdus[1:]])


def _bytes(hdul: fits.HDUList) -> bytes:
    import io

    buffer = io.BytesIO()
    hdul.writeto(buffer)
    return buffer.getvalue()


def test_kernel_image_contract_and_cache_accuracy(fitted):
    psf = fitted[0][4].psf
    kernel = psf.kernel_image(100.3, 17.8)
    assert kernel.shape == (psf.kernel_size, psf.kernel_size) and psf.kernel_size % 2 == 1
    assert kernel.sum() == pytest.approx(1.0, abs=1e-12)
    # Exact at the cache nodes (to rounding: the cache draws a row of nodes in one batch), and
    # within 0.03% in size between them (cubic interpolation).
    np.testing.assert_allclose(psf.kernel_image(0.0, 0.0), psf.render(0.0, 0.0), rtol=1e-13)
    for x, y in [(31.0, 47.0), (128.0, 200.0), (250.0, 5.0)]:
        ratio = adaptive_sigma(psf.kernel_image(x, y)) / adaptive_sigma(psf.render(x, y))
        assert ratio == pytest.approx(1.0, abs=3e-4)


def test_malformed_psf_hdus_are_corrupt_dataset_errors(fitted):
    psf = fitted[0][4].psf
    hdus = psf.to_hdus()
    with pytest.raises(CorruptDatasetError, match="PSF_OPTICAL"):
        Psf.from_hdus(hdus[:1])
    bad = fits.ImageHDU(np.zeros((2, 3)), header=hdus[0].header, name="PSF")
    with pytest.raises(CorruptDatasetError, match="OPTATM"):
        Psf.from_hdus([bad, hdus[1]])
    with pytest.raises(ValueError, match="beta"):
        MoffatField(1.0, np.zeros((3, 3)), 10, 10)
    with pytest.raises(ValueError, match="shape"):
        OpticalField(np.ones((3, 2, 2)), 10, 10)


def test_characterize_measures_psf_fluxes_with_the_fitted_model(survey, fitted):
    plan, _ = survey
    visit, exposure, _, truth, result = fitted[0]
    calexp = dataclasses.replace(exposure, psf=None)
    done = characterize(calexp, optical_field(plan.camera, 0, visit.band, calexp.shape))
    assert calexp.psf == done.psf_result.psf == result.psf
    catalog = done.catalog
    stars = catalog[~catalog["flag_psfFlux"] & (catalog["psfFlux"] / catalog["psfFluxErr"] > 100)]
    dist, idx = cKDTree(np.c_[truth["x"], truth["y"]]).query(np.c_[stars["x"], stars["y"]])
    matched = truth[idx][dist < 1.0]
    ratio = np.asarray(stars["psfFlux"])[dist < 1.0] / np.asarray(matched["flux_electrons"])
    ratio = ratio[matched["source_type"] == "star"]
    assert ratio.size >= 20
    assert np.median(ratio) == pytest.approx(1.0, abs=0.005)


def test_many_stars_use_interpolated_model_moments(survey, fitted, monkeypatch):
    """Beyond GRID_NODES^2 stars the fit draws the model on a grid, not at every star: same
    answer as drawing it at each star (forced here with a grid larger than the ~27 stars)."""
    import stages.characterize.psf_determination as psf_determination

    plan, _ = survey
    visit, exposure, catalog, _, gridded = fitted[0]
    assert gridded.n_used > psf_determination.GRID_NODES**2
    monkeypatch.setattr(psf_determination, "GRID_NODES", 12)
    optical = optical_field(plan.camera, 0, visit.band, exposure.shape)
    exact = determine_psf(exposure, catalog, optical)
    assert gridded.beta == exact.beta
    a, b = gridded.psf.atmosphere.coeffs, exact.psf.atmosphere.coeffs
    assert a[0, 0] == pytest.approx(b[0, 0], rel=2e-4)
    assert np.abs(a - b).max() < 5e-4
    assert gridded.size_resid_rms < 0.01


def test_every_moffat_index_tried_is_fitted_to_convergence(survey, fitted):
    """The index is chosen by comparing chi^2 of fully converged fits: each chi^2 of the search
    equals that of a fit with that index alone (a partly converged fit at one index once
    made a true 4.5 lose to 3.5)."""
    plan, _ = survey
    for visit, exposure, catalog, _, result in fitted:
        optical = optical_field(plan.camera, 0, visit.band, exposure.shape)
        assert len(result.chi2_by_beta) >= 2
        for beta, chi2 in result.chi2_by_beta.items():
            alone = determine_psf(exposure, catalog, optical, PsfDeterminationConfig(betas=(beta,)))
            assert chi2 == pytest.approx(alone.chi2_by_beta[beta], rel=1e-3), beta
        best = min(result.chi2_by_beta, key=result.chi2_by_beta.get)
        assert result.beta == best == visit.conditions.moffat_beta


def test_psf_fluxes_added_to_the_first_pass_equal_a_second_pass(fitted):
    """Calibrate adds PSF fluxes to characterize's catalog instead of measuring the same pixels
    again: every column equals that of a full second pass with the PSF set."""
    _, exposure, catalog, _, result = fitted[0]
    assert exposure.psf is None and np.isnan(catalog["psfFlux"]).all()
    with_psf = dataclasses.replace(exposure, psf=result.psf)
    again = detect_and_measure(with_psf)
    added = measure_psf_fluxes(catalog, with_psf)
    assert added.colnames == again.colnames and len(added) == len(again) > 40
    for name in again.colnames:
        a, b = np.asarray(added[name]), np.asarray(again[name])
        nan_ok = a.dtype.kind == "f"
        assert np.array_equal(a, b, equal_nan=nan_ok), name
        assert added[name].unit == again[name].unit, name
    assert np.isnan(catalog["psfFlux"]).all()  # the input catalog is left as it was
    assert np.isfinite(added["psfFlux"]).mean() > 0.9
    with pytest.raises(DrpError, match="no PSF"):
        measure_psf_fluxes(catalog, exposure)
    with pytest.raises(DrpError, match="psfFlux"):
        measure_psf_fluxes(catalog[["x", "y"]], with_psf)
