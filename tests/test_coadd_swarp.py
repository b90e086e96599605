"""Our warps and co-add against SWarp's of the same images (Lanczos-3, weighted mean)."""

from __future__ import annotations

import numpy as np
import pytest
from test_coadd_resample import gaussian_stars, tan_wcs

from repo.exposure import Exposure, PhotoCalib
from repo.psf import GaussianPsf
from stages.coadd.assemble import AssembleConfig, assemble_coadd
from stages.coadd.warp import make_warp
from stages.quality import swarp

pytestmark = pytest.mark.skipif(not swarp.available(), reason="SWarp (Debian swarp) not installed")

IN_SHAPE = (360, 380)
OUT_SHAPE = (400, 400)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(3)
    n = 30
    ra0, dec0 = 150.0, 2.0
    truth_wcs = tan_wcs(ra0, dec0, 0.0, OUT_SHAPE)
    x = rng.uniform(40, OUT_SHAPE[1] - 40, n)
    y = rng.uniform(40, OUT_SHAPE[0] - 40, n)
    separation = np.hypot(x[:, None] - x, y[:, None] - y) + np.eye(n) * 1e9
    keep = separation.min(axis=1) > 25
    x, y = x[keep], y[keep]
    fluxes = 10 ** rng.uniform(4.0, 5.0, x.size)
    ra, dec = truth_wcs.pixel_to_world_values(x, y)
    images, wcss, sigmas, noises = [], [], [], []
    for k, (rot, dx, dy) in enumerate(
        [(0, 0, 0), (17, 3.3, -2.1), (45, -4.7, 1.9), (80, 2.2, 5.5)]
    ):
        wcs = tan_wcs(ra0 + dx * 0.2 / 3600, dec0 + dy * 0.2 / 3600, rot, IN_SHAPE)
        px, py = wcs.world_to_pixel_values(ra, dec)
        sigma = 1.6 + 0.15 * k
        noise = 3.0 + k
        image = gaussian_stars(IN_SHAPE, px, py, fluxes, sigma)
        images.append(image + rng.normal(0, noise, IN_SHAPE))
        wcss.append(wcs)
        sigmas.append(sigma)
        noises.append(noise)
    return images, wcss, sigmas, noises, truth_wcs, x, y, fluxes


def box_fluxes(image, x, y, half=12):
    return np.array(
        [
            np.nansum(image[int(b) - half : int(b) + half + 1, int(a) - half : int(a) + half + 1])
            for a, b in zip(x, y, strict=True)
        ]
    )


def test_coadd_fluxes_agree_with_swarp_and_truth(inputs, tmp_path):
    images, wcss, sigmas, noises, out_wcs, x, y, fluxes = inputs
    warps = {}
    for k, (image, wcs, sigma, noise) in enumerate(zip(images, wcss, sigmas, noises, strict=True)):
        exposure = Exposure(
            image=image.astype(np.float32),
            mask=np.zeros(IN_SHAPE, np.int32),
            variance=np.full(IN_SHAPE, noise**2, np.float32),
            wcs=wcs,
            psf=GaussianPsf(sigma, size=31),
            photo_calib=PhotoCalib(1.0),
        )
        warps[k] = make_warp([(0, exposure)], out_wcs, OUT_SHAPE, visit=k)
    ours = assemble_coadd(warps, AssembleConfig(reject_artifacts=False)).coadd
    theirs = swarp.swarp_coadd(
        images,
        [np.full(IN_SHAPE, 1 / n**2) for n in noises],
        wcss,
        out_wcs,
        OUT_SHAPE,
        workdir=str(tmp_path),
    )
    everywhere = np.isfinite(ours.image) & (theirs.weight > 0)
    everywhere &= (ours.mask & ours.bit("NO_DATA")) == 0
    inner = np.zeros(OUT_SHAPE, bool)
    inner[40:-40, 40:-40] = True
    inner &= everywhere
    covered = [
        np.all(inner[int(b) - 12 : int(b) + 13, int(a) - 12 : int(a) + 13])
        for a, b in zip(x, y, strict=True)
    ]
    covered = np.array(covered)
    assert covered.sum() >= 8
    our_flux = box_fluxes(ours.image, x[covered], y[covered])
    their_flux = box_fluxes(theirs.image, x[covered], y[covered])
    truth = fluxes[covered]
    # both conserve flux: the same stars within 0.3% of truth (noise ~0.1% for these stars)
    assert abs(np.median(our_flux / truth) - 1) < 3e-3
    assert abs(np.median(their_flux / truth) - 1) < 3e-3
    # and agree with each other star by star (the same Lanczos-3 of the same pixels)
    assert np.max(np.abs(our_flux / their_flux - 1)) < 3e-3
    # pixel by pixel, on the whole overlap, within 2% of the brightest pixel
    peak = np.nanmax(theirs.image[inner])
    assert np.max(np.abs(ours.image - theirs.image)[inner]) < 0.02 * peak
