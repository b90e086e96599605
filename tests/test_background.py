"""Tests of the background model: SExtractor's map on real data, the simulated sky, round trips."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import sep
from astropy.io import fits
from astropy.table import Table
from scipy import ndimage
from simulated import master_calibrations

from repo.errors import CorruptDatasetError, DrpError
from repo.exposure import Exposure
from stages.characterize.background import (
    BackgroundModel,
    background_from_table,
    background_of_image,
    background_to_table,
    clipped_mean_background,
    estimate_background,
    subtract_background,
)
from stages.characterize.cosmic_rays import reject_cosmic_rays
from stages.isr.calibration_products import combine_defects
from stages.isr.correction import run_isr
from stages.simulate import SurveyConfig, make_plan, make_sky, simulate_raw
from stages.simulate.render import sky_image
from stages.simulate.truth import visit_sources

NTT = Path("/work/shared/data/sep-ntt")


def _read(name: str) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the NTT header has non-standard ESO-LOG cards
        return fits.getdata(NTT / name).astype(np.float64)


def _sextractor_config(path: Path) -> dict[str, str]:
    """Keyword -> value (first word) of a SExtractor configuration file."""
    config = {}
    for line in path.read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2:
            config[words[0]] = words[1]
    return config


@pytest.mark.skipif(not NTT.exists(), reason="sep-ntt fixture not present")
def test_matches_sextractor_back_fits():
    """With the background settings of the default.sex that made back.fits and rms.fits."""
    config = _sextractor_config(NTT / "default.sex")
    assert config["CHECKIMAGE_NAME"] == "back.fits,rms.fits"
    mesh = [int(v) for v in config["BACK_SIZE"].split(",")]
    filter_size = [int(v) for v in config["BACK_FILTERSIZE"].split(",")]
    threshold = float(config.get("BACK_FILTTHRESH", "0.0"))
    image = _read("image.fits")
    back, rms = _read("back.fits"), _read("rms.fits")
    model = background_of_image(
        image,
        mesh=(mesh[-1], mesh[0]),  # SExtractor: <size> or <width>,<height>
        filter_size=(filter_size[-1], filter_size[0]),
        filter_threshold=threshold,
    )
    scale = rms.mean()
    assert np.max(np.abs(model.image() - back)) < 0.1 * scale
    assert np.max(np.abs(model.image() - back)) < 1e-3 * scale  # in fact to float rounding
    assert np.max(np.abs(model.rms_image() - rms)) < 1e-3 * scale
    # The stored form (a table of mesh nodes) rebuilds the same map.
    restored = background_from_table(background_to_table(model))
    assert np.max(np.abs(restored.image() - back)) < 1e-3 * scale
    assert model.back.shape == (4, 4)


@pytest.mark.parametrize("mesh", [(64, 64), (50, 40), (64, 32), (300, 170)])
def test_model_reproduces_sep_on_any_geometry(mesh):
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:300, 0:170]
    image = rng.normal(100.0, 5.0, (300, 170)) + 0.1 * xx + 1e-4 * (yy - 100) ** 2
    image = image.astype(np.float32)
    bkg = sep.Background(image, bw=mesh[1], bh=mesh[0], fw=3, fh=3)
    model = background_of_image(image, mesh=mesh, filter_size=3)
    assert np.max(np.abs(model.image() - bkg.back())) < 1e-4
    assert np.max(np.abs(model.rms_image() - bkg.rms())) < 1e-4
    assert model.global_back == pytest.approx(bkg.globalback)


def test_masked_pixels_are_excluded():
    rng = np.random.default_rng(2)
    image = rng.normal(50.0, 3.0, (128, 128)).astype(np.float32)
    clean = background_of_image(image, mesh=32, filter_size=1)
    image[32:96, 32:96] += 30.0  # a big diffuse object filling four meshes, masked
    mask = np.zeros(image.shape, dtype=bool)
    mask[30:98, 30:98] = True
    masked = background_of_image(image, mask, mesh=32, filter_size=1)
    unmasked = background_of_image(image, mesh=32, filter_size=1)
    assert np.max(np.abs(masked.image() - clean.image())) < 1.0  # vs a 30 offset
    assert np.max(unmasked.image()) > 70.0
    exposure = Exposure(image, np.zeros(image.shape, np.int32), np.full(image.shape, 9.0, "f4"))
    exposure.mask[mask] |= exposure.bit("SAT")
    model, level = estimate_background(exposure, mesh=32, filter_size=1)
    assert np.max(np.abs(level - clean.image())) < 1.0
    assert np.array_equal(level, model.image())


def test_table_round_trip_through_fits_is_exact():
    rng = np.random.default_rng(3)
    image = rng.normal(10.0, 1.0, (100, 90)).astype(np.float32)
    model = background_of_image(image, mesh=(32, 24), filter_size=(3, 1))
    buffer = io.BytesIO()
    background_to_table(model).write(buffer, format="fits")
    buffer.seek(0)
    restored = background_from_table(Table.read(buffer, format="fits"))
    assert restored.shape == (100, 90) and restored.mesh == (32, 24)
    assert restored.filter_size == (3, 1)
    assert np.array_equal(restored.back, model.back) and np.array_equal(restored.rms, model.rms)
    assert np.array_equal(restored.image(), model.image())
    assert restored.global_rms == model.global_rms


def test_bad_tables_and_inputs():
    model = background_of_image(np.ones((64, 64), np.float32) * 3.0, mesh=32)
    table = background_to_table(model)
    broken = table.copy()
    del broken.meta["MESH_W"]
    with pytest.raises(CorruptDatasetError, match="MESH_W"):
        background_from_table(broken)
    with pytest.raises(CorruptDatasetError, match="4 distinct boxes"):
        background_from_table(table[:3])
    with pytest.raises(DrpError, match="do not match"):
        BackgroundModel((64, 64), (32, 32), (3, 3), np.zeros((3, 2)), np.zeros((3, 2)), 0, 1)
    with pytest.raises(DrpError, match="2-D"):
        background_of_image(np.ones(10))
    with pytest.raises(DrpError, match=">= 1"):
        background_of_image(np.ones((10, 10)), mesh=0)
    exposure = Exposure(
        np.ones((64, 64), "f4"), np.zeros((64, 64), np.int32), np.ones((64, 64), "f4")
    )
    with pytest.raises(DrpError, match="differ in shape"):
        subtract_background(exposure, np.zeros((10, 10)))


@pytest.fixture(scope="module")
def calexps():
    """ISR + cosmic-ray repaired exposures of detector 0 in every visit, with the true sky."""
    config = SurveyConfig.from_preset("tiny", seed=11)
    plan = make_plan(config)
    sky = make_sky(config, plan)
    camera = plan.camera

    bias, dark, flats = master_calibrations(plan, 0)
    out = []
    for visit in plan.visits:
        raw, _, masks = simulate_raw(plan, sky, visit.id, 0)
        flat = flats[visit.band]
        exposure = run_isr(raw, camera, bias, dark, flat, combine_defects(dark, flat))
        optical_sigma = camera.optical_psf_params(0, 128, 128, visit.band)[0] / 2.3548
        reject_cosmic_rays(exposure, optical_sigma)
        # The sky seen through the master flat, smoothed: the master flat's own photon noise
        # (0.3% per pixel) is imprinted on the sky, and no background map can follow it.
        response = ndimage.uniform_filter(camera.flat(0, visit.band) / flat.image, 31)
        true_sky = sky_image(camera, visit, 0) * response
        out.append((exposure, true_sky, _blank(visit_sources(plan, sky, visit, 0), masks)))
    return out


def _blank(sources, masks, shape=(256, 256)):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    near = ndimage.binary_dilation(masks["saturated"] | masks["cosmic_ray"], iterations=3)
    for x, y, flux in zip(sources["x"], sources["y"], sources["flux_electrons"], strict=True):
        radius = 12.0 if flux < 2e5 else 40.0
        if -radius < x < shape[1] + radius and -radius < y < shape[0] + radius:
            near |= np.hypot(xx - x, yy - y) < radius
    return ~near


@pytest.mark.parametrize(
    "source_sigma, estimator",
    [(None, "mode"), (3.0, "mode"), (5.0, "clipped_mean")],
)
def test_background_matches_simulated_sky(calexps, source_sigma, estimator):
    """Background vs the true sky (gradient included), on blank sky: a tenth of the noise.
    (The clipped mean needs the sources masked: without, they raise it by 0.06 sigma.)"""
    gains = []
    for exposure, true_sky, blank in calexps:
        model, level = estimate_background(
            exposure, mesh=64, source_sigma=source_sigma, estimator=estimator
        )
        noise = np.std((exposure.image - true_sky)[blank])
        error = (level - true_sky)[blank]
        assert np.sqrt(np.mean(error**2)) < 0.1 * noise
        assert abs(np.mean(error)) < 0.05 * noise
        assert np.percentile(np.abs(error), 99) < 0.2 * noise
        flat_error = (true_sky - np.mean(true_sky[blank]))[blank]
        gains.append(np.sqrt(np.mean(flat_error**2) / np.mean(error**2)))
    # The sky gradient is followed: where it is strongest, a constant would be 3x worse.
    assert max(gains) > 3.0


def test_subtract_background(calexps):
    exposure, true_sky, blank = calexps[0]
    work = Exposure(exposure.image.copy(), exposure.mask.copy(), exposure.variance.copy())
    model, level = estimate_background(work)
    subtract_background(work, model)
    assert np.allclose(work.image, exposure.image - level, atol=1e-3)
    assert work.metadata["BGMEAN"] == pytest.approx(float(np.mean(level)))
    assert abs(np.median(work.image[blank])) < 0.1 * np.std(work.image[blank])


def test_clipped_mean_is_the_mean_of_a_poisson_sky_where_the_mode_is_low():
    """On a pure Poisson sky of 2000 electrons, sep's mode estimate is low by about 0.4
    electron (skewness 1/sqrt(2000): 2.5 median - 1.5 mean sits below the mean); the clipped
    mean, with the source mask of the characterization (5 sigma), is within 0.1 electron.
    The mean of a 2048^2 map is known to about 0.03 electron."""
    rng = np.random.default_rng(8)
    sky = 2000.0
    image = rng.poisson(sky, (2048, 2048)).astype(np.float32)
    exposure = Exposure(image, np.zeros(image.shape, np.int32), np.full(image.shape, sky, "f4"))
    _, mode = estimate_background(exposure, mesh=64)
    _, mean = estimate_background(exposure, mesh=64, source_sigma=5.0, estimator="clipped_mean")
    assert np.mean(mode) - sky < -0.25
    assert abs(np.mean(mean) - sky) < 0.1
    # Its rms is the clipped standard deviation of the sky (3.5 sigma clip: 0.995 of sigma).
    model = clipped_mean_background(image, None, 64)
    assert np.median(model.rms) == pytest.approx(np.sqrt(sky) * 0.995, rel=0.01)


def test_clipped_mean_fills_masked_boxes_from_their_neighbours():
    rng = np.random.default_rng(9)
    yy, xx = np.mgrid[0:256, 0:256]
    sky = 500.0 + 0.1 * xx
    image = (sky + rng.normal(0.0, 5.0, sky.shape)).astype(np.float32)
    mask = np.zeros(sky.shape, bool)
    mask[64:128, 64:128] = True  # one whole box
    image[mask] = 1e5  # whatever is under the mask must not count
    model = clipped_mean_background(image, mask, 64, 1)
    assert model.back[1, 1] == pytest.approx(model.back[1, 0], abs=1.0)
    assert np.abs(model.image() - sky)[~mask].max() < 8.0
    with pytest.raises(DrpError, match="every box is masked"):
        clipped_mean_background(image, np.ones(sky.shape, bool), 64)
    with pytest.raises(DrpError, match="estimator"):
        estimate_background(
            Exposure(image, np.zeros(sky.shape, np.int32), np.ones(sky.shape, "f4")),
            estimator="median",
        )
