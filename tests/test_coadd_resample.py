"""Lanczos-3 resampling, warps of exposures and the CoaddPsf, against analytic images."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from repo.exposure import Exposure, PhotoCalib
from repo.psf import GaussianPsf, Psf
from stages.coadd.coadd_psf import CoaddPsf
from stages.coadd.resample import mapping_grid, resample, resample_kernel
from stages.coadd.warp import make_warp


def tan_wcs(ra, dec, rotation_deg, shape, scale_arcsec=0.2):
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [shape[1] / 2 + 0.5, shape[0] / 2 + 0.5]
    s = scale_arcsec / 3600.0
    c, n = np.cos(np.radians(rotation_deg)), np.sin(np.radians(rotation_deg))
    wcs.wcs.cd = np.array([[-s * c, s * n], [s * n, s * c]])
    return wcs


def gaussian_stars(shape, xs, ys, fluxes, sigma):
    """Pixel-integrated Gaussians (error functions), exact fluxes per pixel."""
    from scipy.special import erf

    image = np.zeros(shape)
    ny, nx = shape
    for x, y, f in zip(xs, ys, fluxes, strict=True):
        x0, x1 = max(int(np.floor(x)) - 15, 0), min(int(np.floor(x)) + 16, nx)
        y0, y1 = max(int(np.floor(y)) - 15, 0), min(int(np.floor(y)) + 16, ny)
        if x1 <= x0 or y1 <= y0:
            continue
        ex = np.arange(x0, x1 + 1) - 0.5 - x
        ey = np.arange(y0, y1 + 1) - 0.5 - y
        px = np.diff(0.5 * erf(ex / (np.sqrt(2) * sigma)))
        py = np.diff(0.5 * erf(ey / (np.sqrt(2) * sigma)))
        image[y0:y1, x0:x1] += f * np.outer(py, px)
    return image


@pytest.fixture(scope="module")
def field():
    rng = np.random.default_rng(5)
    shape = (400, 500)
    n = 40
    xs = rng.uniform(30, shape[1] - 30, n)
    ys = rng.uniform(30, shape[0] - 30, n)
    fluxes = rng.uniform(1e3, 1e4, n)
    wcs_in = tan_wcs(53.1, -27.8, 0.0, shape)
    return shape, xs, ys, fluxes, wcs_in


@pytest.mark.parametrize("rotation, scale", [(0.0, 0.2), (33.0, 0.2), (71.0, 0.27)])
def test_resampled_stars_match_the_analytic_image(field, rotation, scale):
    shape, xs, ys, fluxes, wcs_in = field
    sigma = 2.0
    image = gaussian_stars(shape, xs, ys, fluxes, sigma)
    out_shape = (420, 420)
    wcs_out = tan_wcs(53.1002, -27.8001, rotation, out_shape, scale)
    gx, gy = mapping_grid(wcs_out, wcs_in, out_shape)
    out, var, mask, w2 = resample(
        image, np.ones(shape), np.zeros(shape, np.int32), gx, gy, out_shape, no_data_bit=256
    )
    sky = wcs_in.pixel_to_world_values(xs, ys)
    ox, oy = wcs_out.world_to_pixel_values(*sky)
    sigma_out = sigma * 0.2 / scale
    truth = gaussian_stars(out_shape, ox, oy, fluxes, sigma_out)
    inside = np.isfinite(out)
    # Lanczos-3 of a well-sampled Gaussian: within 0.5% of the peak everywhere. With another
    # pixel scale the warp samples the input's pixel-convolved light (it does not integrate over
    # the new pixels, nor does SWarp): 2% at the peak for pixels 1.35 times bigger.
    peak = fluxes.max() / (2 * np.pi * sigma_out**2)
    tolerance = 5e-3 if scale == 0.2 else 2.5e-2
    assert np.nanmax(np.abs(out - truth)[inside]) < tolerance * peak
    # flux conservation star by star (through the Jacobian when the pixel scales differ)
    far = (ox > 20) & (ox < out_shape[1] - 20) & (oy > 20) & (oy < out_shape[0] - 20)
    separation = np.hypot(ox[:, None] - ox, oy[:, None] - oy) + np.eye(ox.size) * 1e9
    far &= separation.min(axis=1) > 30  # a box edge through a neighbour is not a flux test
    assert far.sum() >= 10
    yy, xx = np.mgrid[: out_shape[0], : out_shape[1]]
    for x, y in zip(ox[far], oy[far], strict=True):
        box = (np.abs(xx - x) < 12) & (np.abs(yy - y) < 12) & inside
        t = truth[box].sum()
        assert abs(out[box].sum() / t - 1) < 1e-3
    assert (mask[~inside] == 256).all() and (mask[inside] == 0).all()
    assert np.allclose(var[inside], w2[inside] * (scale / 0.2) ** 4, rtol=1e-5)


def test_noise_matches_the_propagated_variance():
    rng = np.random.default_rng(2)
    shape = (600, 600)
    sigma = 3.0
    noise = rng.normal(0, sigma, shape)
    wcs_in = tan_wcs(10.0, 5.0, 0.0, shape)
    wcs_out = tan_wcs(10.0003, 5.0002, 21.0, (500, 500))
    gx, gy = mapping_grid(wcs_out, wcs_in, (500, 500))
    out, var, _, w2 = resample(
        noise, np.full(shape, sigma**2), np.zeros(shape, np.int32), gx, gy, (500, 500)
    )
    good = np.isfinite(out)
    # the pixel noise is the variance plane (each pixel's own noise) ...
    assert abs(np.std(out[good]) / np.sqrt(np.mean(var[good])) - 1) < 0.02
    # ... and a big aperture's sum has sum(var) / mean(sum w^2): the correlation factor
    boxes = [
        out[y : y + 25, x : x + 25].sum() for y in range(100, 400, 25) for x in range(100, 400, 25)
    ]
    predicted = 625 * np.mean(var[good]) / np.mean(w2[good])
    assert abs(np.std(boxes) / np.sqrt(predicted) - 1) < 0.15


def test_masked_and_nan_pixels_are_not_interpolated_from():
    shape = (100, 100)
    image = np.ones(shape, np.float32)
    image[50, 50] = 1e6  # a bad pixel, masked
    image[20, 20] = np.nan
    mask = np.zeros(shape, np.int32)
    mask[50, 50] = 1
    wcs = tan_wcs(0.0, 0.0, 0.0, shape)
    out_wcs = wcs.deepcopy()
    out_wcs.wcs.crpix = out_wcs.wcs.crpix + [0.3, 0.4]
    gx, gy = mapping_grid(out_wcs, wcs, shape)
    out, _, m, _ = resample(image, image, mask, gx, gy, shape, skip_bits=1, no_data_bit=256)
    good = np.isfinite(out)
    assert np.allclose(out[good], 1.0, atol=1e-5)  # neither the masked value nor the NaN leaks
    assert not good[50, 50] or m[50, 50] & 1  # the nearest of a skipped pixel is NO_DATA
    assert (m[~good] & 256).all()


def test_resample_kernel_is_the_gaussian_seen_through_the_map():
    psf = GaussianPsf(2.0, size=41)
    jac = np.array([[1.2, 0.3], [-0.2, 0.9]])  # input pixels per output pixel
    kernel = resample_kernel(psf.kernel_image(0, 0), jac, 41)
    # covariance in output pixels: J^-1 C J^-T
    inv = np.linalg.inv(jac)
    expected = inv @ (4.0 * np.eye(2)) @ inv.T
    u = np.arange(-20, 21)
    uu, vv = np.meshgrid(u, u)
    cov = np.array(
        [
            [(kernel * uu * uu).sum(), (kernel * uu * vv).sum()],
            [(kernel * uu * vv).sum(), (kernel * vv * vv).sum()],
        ]
    )
    assert np.allclose(cov, expected, rtol=0.01, atol=0.01)
    assert kernel.sum() == pytest.approx(1.0)


def _exposure(image, wcs, psf_sigma, zero_point=30.0):
    shape = image.shape
    return Exposure(
        image=image.astype(np.float32),
        mask=np.zeros(shape, np.int32),
        variance=np.ones(shape, np.float32),
        wcs=wcs,
        psf=GaussianPsf(psf_sigma, size=31),
        photo_calib=PhotoCalib.from_zero_point(zero_point),
    )


def test_warp_of_two_detectors_is_in_njy_with_a_psf_per_detector(field, tmp_path):
    shape, xs, ys, fluxes, wcs_in = field
    left = _exposure(gaussian_stars(shape, xs, ys, fluxes, 1.5), wcs_in, 1.5)
    right_wcs = wcs_in.deepcopy()
    right_wcs.wcs.crpix = right_wcs.wcs.crpix - [shape[1] + 10, 0]  # beside it, 10 px gap
    right = _exposure(np.zeros(shape), right_wcs, 2.5, zero_point=29.0)
    out_shape = (500, 1100)
    out_wcs = tan_wcs(53.1, -27.8, 0.0, out_shape)
    out_wcs.wcs.crpix = [out_shape[1] / 2 - 240, out_shape[0] / 2 + 0.5]
    warp = make_warp([(1, left), (2, right)], out_wcs, out_shape, visit=7, band="r")
    assert warp.metadata["NINPUTS"] == 2 and warp.metadata["BUNIT"] == "nJy"
    # flux in nJy: counts x 10^(-0.4 (zp - 31.4))
    sky = wcs_in.pixel_to_world_values(xs, ys)
    ox, oy = out_wcs.world_to_pixel_values(*sky)
    separation = np.hypot(xs[:, None] - xs, ys[:, None] - ys) + np.eye(xs.size) * 1e9
    k = int(np.argmax(np.where(separation.min(axis=1) > 30, fluxes, 0)))
    box = warp.image[int(oy[k]) - 12 : int(oy[k]) + 13, int(ox[k]) - 12 : int(ox[k]) + 13]
    assert np.nansum(box) == pytest.approx(fluxes[k] * 10 ** (-0.4 * (30.0 - 31.4)), rel=2e-3)
    # PSF: each detector's own where it lands, NO_DATA in the gap
    psf = warp.psf
    assert isinstance(psf, CoaddPsf)
    x_left = float(ox[k])
    x_right = x_left + shape[1] + 10
    assert psf.sigma(x_left, oy[k]) == pytest.approx(1.5, rel=2e-3)
    assert psf.sigma(min(x_right, out_shape[1] - 5), 200) == pytest.approx(2.5, rel=2e-3)
    gap_sky = wcs_in.pixel_to_world_values(shape[1] + 4.0, 200.0)
    gap_x = int(np.round(out_wcs.world_to_pixel_values(*gap_sky)[0]))
    assert warp.mask[200, gap_x] & warp.bit("NO_DATA")
    # the PSF survives a FITS round trip
    hdus = fits.HDUList([fits.PrimaryHDU(), *psf.to_hdus()])
    path = tmp_path / "psf.fits"
    hdus.writeto(path)
    with fits.open(path) as read:
        again = Psf.from_hdus(list(read[1:]))
    assert again == psf
    assert np.array_equal(again.kernel_image(100.0, 100.0), psf.kernel_image(100.0, 100.0))
