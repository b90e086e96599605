"""The Fourier-space PSF drawing (stages.characterize.psf_kspace) against GalSim's drawing of the same
profiles (what the simulator draws stars with), made with tight accuracy settings so that it is
the exact image to 1e-7 of the peak (GalSim's defaults are good to about 4e-5)."""

from __future__ import annotations

import galsim
import numpy as np
import pytest

from stages.characterize.psf_kspace import draw_kernels, moffat_transform_table

GSPARAMS = galsim.GSParams(folding_threshold=1e-5, maxk_threshold=1e-7)


def galsim_kernel(beta, atmosphere, optical, size, dx, dy):
    fwhm, e1, e2 = atmosphere
    profile = galsim.Moffat(beta=beta, fwhm=fwhm, gsparams=GSPARAMS).shear(e1=e1, e2=e2)
    if optical is not None:
        ofwhm, oe1, oe2 = optical
        gauss = galsim.Gaussian(fwhm=ofwhm, gsparams=GSPARAMS).shear(e1=oe1, e2=oe2)
        profile = galsim.Convolve(profile, gauss, gsparams=GSPARAMS)
    image = profile.drawImage(nx=size, ny=size, scale=1.0, method="auto", offset=(dx, dy))
    array = image.array.astype(float)
    return array / array.sum()


CASES = [
    # beta, (fwhm, e1, e2), optical or None, size, dx, dy, tolerance (fraction of the peak)
    (4.5, (3.0, 0.03, -0.02), (1.5, 0.05, 0.01), 41, 0.3, -0.2, 1e-5),
    (3.5, (4.0, -0.05, 0.04), (2.0, 0.0, 0.02), 41, 0.0, 0.0, 1e-5),
    (4.0, (2.5, 0.3, -0.2), (1.0, -0.1, 0.05), 31, -0.5, 0.5, 1e-5),
    (5.5, (3.2, 0.0, 0.0), None, 31, 0.25, 0.1, 1e-5),
    # Undersampled (1.6 pixel FWHM): the aliases must be folded in; a shallow wing (beta 2.5)
    # needs a wide grid.
    (2.5, (1.6, 0.0, 0.1), (0.8, 0.02, 0.0), 25, -0.4, 0.45, 1e-5),
    (4.5, (1.2, 0.05, 0.0), (0.6, 0.0, 0.0), 25, 0.1, 0.3, 1e-5),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"beta{c[0]}-fwhm{c[1][0]}")
def test_kernels_equal_galsim_drawings(case):
    beta, atmosphere, optical, size, dx, dy, tolerance = case
    expected = galsim_kernel(beta, atmosphere, optical, size, dx, dy)
    drawn = draw_kernels(beta, atmosphere, optical, size, dx, dy)[0]
    assert drawn.shape == (size, size)
    assert drawn.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.abs(drawn - expected).max() < tolerance * expected.max()


def test_undersampled_kernel_needs_its_aliases():
    """Without folding the frequencies beyond Nyquist in, a 1.2-pixel PSF is off by percents:
    the test above would catch a drawing that skips them."""
    beta, atmosphere, optical, size, dx, dy, _ = CASES[-1]
    expected = galsim_kernel(beta, atmosphere, optical, size, dx, dy)
    drawn = draw_kernels(beta, atmosphere, optical, size, dx, dy)[0]
    ky = 2 * np.pi * np.fft.fftfreq(64)[:, None]
    kx = 2 * np.pi * np.fft.fftfreq(64)[None, :]
    # The same product sampled on the base frequencies only, no aliases:
    rd = atmosphere[0] / (2 * np.sqrt(2 ** (1 / beta) - 1))
    table = moffat_transform_table(beta)
    q = np.hypot(kx, ky) * rd  # nearly round: enough to show the size of the effect
    moffat = np.interp(q / 2e-3, np.arange(table.size), table, right=0.0)
    sigma = optical[0] / 2.3548200450309493
    transform = moffat * np.exp(-0.5 * sigma**2 * (kx**2 + ky**2))
    transform = transform * np.sinc(kx / (2 * np.pi)) * np.sinc(ky / (2 * np.pi))
    transform = transform * np.exp(-1j * (kx * dx + ky * dy))
    naive = np.real(np.fft.ifft2(transform))
    rows = np.arange(-(size // 2), size // 2 + 1) % 64
    naive = naive[rows][:, rows]
    naive /= naive.sum()
    assert np.abs(naive - expected).max() > 50 * np.abs(drawn - expected).max()


def test_kernels_do_not_depend_on_the_batch():
    rng = np.random.default_rng(4)
    n = 9
    atmosphere = (rng.uniform(2.5, 4.0, n), rng.uniform(-0.1, 0.1, n), rng.uniform(-0.1, 0.1, n))
    optical = (rng.uniform(1.0, 2.0, n), np.zeros(n), np.full(n, 0.02))
    dx = rng.uniform(-0.5, 0.5, n)
    together = draw_kernels(3.5, atmosphere, optical, 41, dx, 0.0)
    for k in range(n):
        alone = draw_kernels(
            3.5,
            tuple(a[k : k + 1] for a in atmosphere),
            tuple(o[k : k + 1] for o in optical),
            41,
            dx[k : k + 1],
            0.0,
        )[0]
        np.testing.assert_allclose(alone, together[k], rtol=0, atol=1e-15)


def test_moffat_transform_table_matches_its_limits():
    """M(0) = 1 and, for beta = 2.5 (nu = 3/2), the closed form (1 + q) exp(-q)."""
    table = moffat_transform_table(2.5)
    q = np.arange(table.size) * 2e-3
    np.testing.assert_allclose(table, (1 + q) * np.exp(-q), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"size": 40}, "odd"),
        ({"beta": 1.0}, "beta > 1"),
        ({"atmosphere": (0.0, 0.0, 0.0)}, "FWHM > 0"),
        ({"atmosphere": (3.0, 0.8, 0.7)}, "distortion"),
        ({"optical": (-1.0, 0.0, 0.0)}, "optical FWHM"),
    ],
)
def test_bad_parameters_are_named(kwargs, message):
    args = {"beta": 3.5, "atmosphere": (3.0, 0.0, 0.0), "optical": (1.5, 0.0, 0.0), "size": 41}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        draw_kernels(**args)
