"""Co-add assembly on synthetic warps with known sky, seeing, noise and artifacts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erf

from repo.errors import DrpError
from repo.exposure import Exposure, PhotoCalib
from repo.psf import GaussianPsf
from stages.coadd.assemble import AssembleConfig, assemble_coadd, masked_median
from stages.coadd.coadd_psf import CoaddPsf, PsfInput

SHAPE = (300, 320)
SIGMAS = [1.4, 1.6, 1.8, 2.0, 2.2, 1.5]  # seeing of each warp (pixels)
NOISE = [4.0, 5.0, 4.5, 6.0, 5.5, 4.2]  # sky noise of each warp (nJy per pixel)


def stars_image(xs, ys, fluxes, sigma):
    image = np.zeros(SHAPE)
    for x, y, f in zip(xs, ys, fluxes, strict=True):
        x0, y0 = int(x) - 15, int(y) - 15
        ex = np.arange(x0, x0 + 32) - 0.5 - x
        ey = np.arange(y0, y0 + 32) - 0.5 - y
        px = np.diff(0.5 * erf(ex / (np.sqrt(2) * sigma)))
        py = np.diff(0.5 * erf(ey / (np.sqrt(2) * sigma)))
        image[y0 : y0 + 31, x0 : x0 + 31] += f * np.outer(py, px)
    return image


def line_image(x0, y0, x1, y1, flux_per_pixel, sigma, samples=2000):
    """A trail or streak: a segment of uniform brightness seen through the PSF."""
    t = np.linspace(0, 1, samples)
    xs, ys = x0 + (x1 - x0) * t, y0 + (y1 - y0) * t
    inside = (xs > 16) & (xs < SHAPE[1] - 17) & (ys > 16) & (ys < SHAPE[0] - 17)
    length = np.hypot(x1 - x0, y1 - y0)
    flux = np.full(inside.sum(), flux_per_pixel * length / samples)
    return stars_image(xs[inside], ys[inside], flux, sigma)


@pytest.fixture(scope="module")
def survey():
    rng = np.random.default_rng(11)
    n_stars = 60
    xs = rng.uniform(25, SHAPE[1] - 25, n_stars)
    ys = rng.uniform(25, SHAPE[0] - 25, n_stars)
    fluxes = 10 ** rng.uniform(3.3, 5.0, n_stars)
    static = [stars_image(xs, ys, fluxes, s) for s in SIGMAS]
    artifacts = [np.zeros(SHAPE) for _ in SIGMAS]
    artifacts[1] += line_image(40, 60, 70, 75, 800.0, SIGMAS[1])  # asteroid trail
    artifacts[2] += stars_image([200.3], [150.7], [30000.0], SIGMAS[2])  # transient
    artifacts[3] += line_image(0, 20, SHAPE[1], 280, 400.0, SIGMAS[3])  # satellite streak
    noise = [rng.normal(0, n, SHAPE) for n in NOISE]
    return xs, ys, fluxes, static, artifacts, noise


def warps_of(static, extra, noise):
    warps = {}
    for k, (image, art, sky_noise) in enumerate(zip(static, extra, noise, strict=True)):
        visit = 100 + k
        variance = np.full(SHAPE, NOISE[k] ** 2, np.float32)
        psf = CoaddPsf(
            [
                PsfInput(
                    GaussianPsf(SIGMAS[k], size=31),
                    np.array([[1.0, 0, 0], [0, 1.0, 0]]),
                    np.array(
                        [[-1, -1], [SHAPE[1], -1], [SHAPE[1], SHAPE[0]], [-1, SHAPE[0]]], float
                    ),
                    1.0,
                    visit,
                    0,
                )
            ]
        )
        warps[visit] = Exposure(
            image=(image + art + sky_noise).astype(np.float32),
            mask=np.zeros(SHAPE, np.int32),
            variance=variance,
            psf=psf,
            photo_calib=PhotoCalib(1.0),
            metadata={"NOISECOR": 1.0},
        )
    return warps


def box_sums(image, xs, ys, half=12):
    return np.array(
        [
            image[int(y) - half : int(y) + half + 1, int(x) - half : int(x) + half + 1].sum()
            for x, y in zip(xs, ys, strict=True)
        ]
    )


def test_artifacts_are_clipped_and_stars_keep_their_flux(survey):
    xs, ys, fluxes, static, artifacts, noise = survey
    zeros = [np.zeros(SHAPE)] * len(SIGMAS)
    result = assemble_coadd(warps_of(static, artifacts, noise), band="r")
    coadd = result.coadd
    weights = np.array([1 / n**2 for n in NOISE])
    # the same warps without artifacts, not clipped: what the co-add should be
    clean = assemble_coadd(
        warps_of(static, zeros, noise), AssembleConfig(reject_artifacts=False)
    ).coadd
    # constant stars lose nothing: the clipped co-add's box fluxes equal the clean co-add's
    far = (xs > 30) & (xs < SHAPE[1] - 30) & (ys > 30) & (ys < SHAPE[0] - 30)
    bright = far & (fluxes > 1e4)
    ratio = box_sums(coadd.image, xs[bright], ys[bright]) / box_sums(
        clean.image, xs[bright], ys[bright]
    )
    assert np.median(np.abs(ratio - 1)) < 1e-3
    # and they are right: against the weighted mean of the true images
    truth = sum(w * s for w, s in zip(weights, static, strict=True)) / weights.sum()
    true_ratio = box_sums(clean.image, xs[bright], ys[bright]) / box_sums(
        truth, xs[bright], ys[bright]
    )
    assert abs(np.median(true_ratio) - 1) < 2e-3
    # each artifact leaves under 2% of its single-epoch flux
    for k in (1, 2, 3):
        footprint = artifacts[k] > 0.01 * artifacts[k].max()
        single = artifacts[k][footprint].sum()
        left = (coadd.image - clean.image)[footprint].sum()
        assert abs(left) < 0.02 * single, (k, left / single)
        clipped = (coadd.mask & coadd.bit("CLIPPED")) != 0
        assert clipped[artifacts[k] > 0.3 * artifacts[k].max()].all()
    # without clipping the artifacts would stay at their weight's share
    unclipped = assemble_coadd(
        warps_of(static, artifacts, noise), AssembleConfig(reject_artifacts=False)
    ).coadd
    footprint = artifacts[2] > 0.01 * artifacts[2].max()
    share = (unclipped.image - clean.image)[footprint].sum() / artifacts[2][footprint].sum()
    assert share == pytest.approx(weights[2] / weights.sum(), rel=0.05)
    assert result.clipped_footprints >= 3
    assert coadd.metadata["NVISITS"] == len(SIGMAS)


def test_coadd_noise_matches_its_variance_and_the_psf_is_the_weighted_sum(survey):
    _, _, _, _, _, noise = survey
    zeros = [np.zeros(SHAPE)] * len(SIGMAS)
    coadd = assemble_coadd(warps_of(zeros, zeros, noise)).coadd
    weights = np.array([1 / n**2 for n in NOISE])
    expected_var = (weights**2 * np.array(NOISE) ** 2).sum() / weights.sum() ** 2
    assert np.allclose(coadd.variance, expected_var, rtol=1e-5)
    assert np.std(coadd.image) / np.sqrt(expected_var) == pytest.approx(1.0, abs=0.02)
    # the co-add PSF: the weighted sum of the inputs' Gaussians
    kernel = coadd.psf.kernel_image(150.0, 150.0)
    u = np.arange(31) - 15
    uu, vv = np.meshgrid(u, u)
    expected = (
        sum(
            w * np.exp(-(uu**2 + vv**2) / (2 * s**2)) / (2 * np.pi * s**2)
            for w, s in zip(weights, SIGMAS, strict=True)
        )
        / weights.sum()
    )
    assert np.abs(kernel - expected).max() < 2e-3 * expected.max()
    assert len(coadd.psf.inputs) == len(SIGMAS)
    assert np.allclose([i.weight for i in coadd.psf.inputs], weights, rtol=1e-6)


def test_masked_input_pixels_are_rejected_and_marked(survey):
    _, _, _, static, _, noise = survey
    zeros = [np.zeros(SHAPE)] * len(SIGMAS)
    warps = warps_of(static, zeros, noise)
    first = warps[100]
    first.image[50:60, 50:60] = 1e6  # saturated garbage, masked
    first.mask[50:60, 50:60] |= first.bit("SAT")
    warps[101].mask[:, :10] = warps[101].bit("NO_DATA")
    coadd = assemble_coadd(warps).coadd
    assert np.all(coadd.image[50:60, 50:60] < 1e4)
    assert np.all(coadd.mask[50:60, 50:60] & coadd.bit("REJECTED"))
    assert np.all(coadd.mask[50:60, 50:60] & coadd.bit("SAT"))
    assert np.all(coadd.mask[50:60, 50:60] & coadd.bit("INEXACT_PSF"))
    assert not np.any(coadd.mask[:, :10] & coadd.bit("NO_DATA"))  # other warps cover it
    assert not np.any(coadd.mask[100:200, 100:200] & coadd.bit("INEXACT_PSF"))
    # seeing from 1.4 to 2.2 pixels: no star of the static sky is taken for an artifact
    assert coadd.metadata["NCLIPPED"] == 0


def test_masked_median_and_bad_input():
    images = np.array([[[1.0, 5.0]], [[3.0, np.nan]], [[2.0, 7.0]], [[10.0, 1.0]]], np.float32)
    usable = np.isfinite(images)
    usable[3, 0, 0] = False
    assert masked_median(images, usable).tolist() == [[2.0, 5.0]]
    with pytest.raises(DrpError, match="at least one warp"):
        assemble_coadd({})


def test_an_artifact_cut_by_its_warps_edge_is_clipped(survey):
    """An asteroid trail that runs off its detector (into NO_DATA of its warp) is still found."""
    _, _, _, static, artifacts, noise = survey
    zeros = [np.zeros(SHAPE)] * len(SIGMAS)

    def with_edge(warps):
        warps[101].mask[:, :55] |= warps[101].bit("NO_DATA")  # the trail spans x = 40..70
        return warps

    coadd = assemble_coadd(with_edge(warps_of(static, artifacts, noise))).coadd
    clean = assemble_coadd(
        with_edge(warps_of(static, zeros, noise)), AssembleConfig(reject_artifacts=False)
    ).coadd
    footprint = (artifacts[1] > 0.01 * artifacts[1].max()) & (np.arange(SHAPE[1]) >= 55)
    left = (coadd.image - clean.image)[footprint].sum()
    assert abs(left) < 0.02 * artifacts[1][footprint].sum()
