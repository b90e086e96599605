"""Star/galaxy classification (stages.measure.classification) on images with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table
from test_measurement import gaussian_image, grid_stars

from repo.errors import DrpError
from repo.exposure import Exposure
from repo.psf import GaussianPsf
from stages.measure.classification import add_extendedness, psf_moments
from stages.measure.measurement import detect_and_measure

PSF_SIGMA = 1.6


def test_psf_moments_of_a_gaussian_are_its_covariance():
    ixx, iyy, ixy = psf_moments(GaussianPsf(PSF_SIGMA), np.array([10.0, 50.0]), np.zeros(2), 15)
    np.testing.assert_allclose(ixx, PSF_SIGMA**2, rtol=1e-5)
    np.testing.assert_allclose(iyy, PSF_SIGMA**2, rtol=1e-5)
    np.testing.assert_allclose(ixy, 0.0, atol=1e-8)


def _field(galaxy_sigma: float, flux: float, seed: int):
    """Stars (the PSF) and round galaxies (the PSF convolved with a Gaussian of
    ``galaxy_sigma``) on alternate grid points, with sky noise; returns the catalog."""
    rng = np.random.default_rng(seed)
    sources = grid_stars(10, 32.0, flux, rng)
    is_star = np.arange(len(sources)) % 2 == 0
    shape = (352, 352)
    image = gaussian_image(shape, sources[is_star], np.eye(2) * PSF_SIGMA**2)
    wide = PSF_SIGMA**2 + galaxy_sigma**2
    image += gaussian_image(shape, sources[~is_star], np.eye(2) * wide)
    sky_sigma = 10.0
    variance = sky_sigma**2 + image
    image = image + rng.normal(size=shape) * np.sqrt(variance)
    exposure = Exposure(image, np.zeros(shape, np.int32), variance, psf=GaussianPsf(PSF_SIGMA))
    catalog = add_extendedness(detect_and_measure(exposure), exposure.psf, 15)
    distance = np.hypot(
        np.asarray(catalog["x"])[:, None] - sources[:, 0],
        np.asarray(catalog["y"])[:, None] - sources[:, 1],
    )
    nearest = distance.argmin(axis=1)
    assert (distance.min(axis=1) < 1.0).all() and len(catalog) == len(sources)
    return catalog, is_star[nearest]


def test_bright_stars_are_point_sources_and_galaxies_extended():
    """S/N ~ 300: galaxies 1 pixel sigma wide (T 40% above the PSF's) are all extended,
    stars none."""
    catalog, star = _field(galaxy_sigma=1.0, flux=6e4, seed=1)
    ext = np.asarray(catalog["extendedness"])
    assert (ext[star] == 0).all()
    assert (ext[~star] == 1).all()
    np.testing.assert_allclose(catalog["ixxPSF"], PSF_SIGMA**2, rtol=1e-5)


def test_faint_stars_stay_point_sources_at_the_stated_noise():
    """S/N ~ 30: the size excess of stars scatters by about 2 / (S/N); at 3 sigma hardly any
    star is called extended, and galaxies 1.5 pixel sigma wide still are."""
    stars, galaxies = [], []
    for seed in range(4):
        catalog, star = _field(galaxy_sigma=1.5, flux=2e3, seed=seed + 10)
        ext = np.asarray(catalog["extendedness"])
        snr = np.asarray(catalog["psfFlux"]) / np.asarray(catalog["psfFluxErr"])
        assert 15 < np.median(snr) < 60
        stars.append(ext[star])
        galaxies.append(ext[~star])
    stars, galaxies = np.concatenate(stars), np.concatenate(galaxies)
    assert np.mean(stars == 0) >= 0.98
    assert np.mean(galaxies == 1) >= 0.9


def test_unusable_moments_give_nan_and_bad_input_is_named():
    table = Table(
        {
            "x": [20.0, 20.0],
            "y": [20.0, 20.0],
            "ixx": [2.56, np.nan],
            "iyy": [2.56, 2.56],
            "psfFlux": [1e4, 1e4],
            "psfFluxErr": [100.0, 100.0],
            "flag_moments": [True, False],
        }
    )
    out = add_extendedness(table, GaussianPsf(PSF_SIGMA), 15)
    assert np.isnan(out["extendedness"]).all()
    with pytest.raises(DrpError, match="ixx"):
        add_extendedness(table[["x", "y"]], GaussianPsf(PSF_SIGMA), 15)
    with pytest.raises(DrpError, match="n_sigma"):
        add_extendedness(table, GaussianPsf(PSF_SIGMA), 15, n_sigma=0.0)
