"""Tests of detection and measurement: exact answers on synthetic Gaussian stars, the simulated
survey's truth, and SExtractor's catalog of the sep NTT test image."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import sep
from astropy.io import fits
from astropy.table import Table
from scipy.spatial import cKDTree
from simulated import isr_with_true_calibrations

from repo.errors import DrpError
from repo.exposure import Exposure
from repo.formatters.parquet import read_catalog, write_catalog
from repo.psf import GaussianPsf, adaptive_sigma
from stages.characterize.psf_determination import determine_psf, optical_field, select_psf_stars
from stages.measure.measurement import SOURCE_COLUMNS, MeasurementConfig, detect_and_measure
from stages.measure.moments import adaptive_moments, adaptive_moments_of_stamps
from stages.simulate import SurveyConfig, make_plan, make_sky

NTT = Path("/work/shared/data/sep-ntt")
SEED = 5


# ------------------------------------------------------------------------------ synthetic stars
def gaussian_image(shape, stars, cov):
    """Sampled elliptical Gaussians of covariance ``cov`` and flux ``f`` at each ``(x, y, f)``."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    inv = np.linalg.inv(cov)
    norm = 2 * math.pi * math.sqrt(np.linalg.det(cov))
    image = np.zeros(shape)
    for x, y, flux in stars:
        dx, dy = xx - x, yy - y
        quad = inv[0, 0] * dx * dx + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy * dy
        image += flux * np.exp(-0.5 * quad) / norm
    return image


def circle_sum(image, x, y, r, sub=25):
    """Sum of ``image`` (pixels as uniform squares) inside a circle, by sub-pixel sampling."""
    x0, x1 = int(math.floor(x - r - 1)), int(math.ceil(x + r + 1))
    y0, y1 = int(math.floor(y - r - 1)), int(math.ceil(y + r + 1))
    offsets = (np.arange(sub) + 0.5) / sub - 0.5
    total = 0.0
    for j in range(y0, y1 + 1):
        for i in range(x0, x1 + 1):
            dx = i + offsets[None, :] - x
            dy = j + offsets[:, None] - y
            total += image[j, i] * np.mean(dx * dx + dy * dy < r * r)
    return total


def grid_stars(n_side, spacing, flux, rng):
    centres = spacing * (np.arange(n_side) + 1.0)
    x, y = np.meshgrid(centres, centres)
    x = x.ravel() + rng.uniform(-0.5, 0.5, x.size)
    y = y.ravel() + rng.uniform(-0.5, 0.5, y.size)
    return np.c_[x, y, np.broadcast_to(flux, x.shape)]


def test_noise_free_gaussian_stars_are_measured_exactly():
    rng = np.random.default_rng(1)
    stars = grid_stars(5, 40.0, 1e4, rng)
    sigma = 2.0
    image = gaussian_image((240, 240), stars, np.eye(2) * sigma**2)
    exposure = Exposure(
        image, np.zeros(image.shape, np.int32), np.ones(image.shape), psf=GaussianPsf(sigma)
    )
    catalog = detect_and_measure(exposure)
    assert len(catalog) == len(stars)
    dist, idx = cKDTree(np.c_[catalog["x"], catalog["y"]]).query(stars[:, :2])
    assert dist.max() < 2e-3
    rows = catalog[idx]
    assert np.asarray(rows["psfFlux"]) == pytest.approx(1e4, rel=1e-4)
    assert np.asarray(rows["psfFluxErr"]) == pytest.approx(
        1.0 / math.sqrt((GaussianPsf(sigma).kernel_image() ** 2).sum()), rel=1e-3
    )
    for r in (3.0, 6.0, 9.0, 12.0):
        name = f"ap{int(r):02d}Flux"
        enclosed = [circle_sum(image, x, y, r) for x, y in rows["x", "y"]]
        assert np.asarray(rows[name]) == pytest.approx(enclosed, rel=1e-3)
        area = [circle_sum(np.ones(image.shape), x, y, r) for x, y in rows["x", "y"]]
        assert np.asarray(rows[f"{name}Err"]) == pytest.approx(np.sqrt(area), rel=1e-3)
    assert np.asarray(rows["kronFlux"]) == pytest.approx(1e4, rel=5e-3)
    assert np.asarray(rows["ixx"]) == pytest.approx(sigma**2, rel=1e-4)
    assert np.asarray(rows["iyy"]) == pytest.approx(sigma**2, rel=1e-4)
    assert np.abs(rows["ixy"]).max() < 1e-4
    assert not any(rows[name].any() for name in catalog.colnames if name.startswith("flag"))


def test_adaptive_moments_of_an_elliptical_gaussian():
    cov = np.array([[6.0, 1.5], [1.5, 3.0]])
    image = gaussian_image((61, 61), [(30.3, 29.6, 1e4)], cov)
    m = adaptive_moments(image, np.array([30.0]), np.array([30.0]), 2.0, 20)
    assert (m["ixx"][0], m["iyy"][0], m["ixy"][0]) == pytest.approx((6.0, 3.0, 1.5), rel=1e-5)
    assert (m["x"][0], m["y"][0]) == pytest.approx((30.3, 29.6), abs=1e-5)
    assert not m["failed"][0]


def test_adaptive_moments_solve_a_gaussian_in_a_few_steps():
    """The step solves a Gaussian source exactly (the plain C <- 2M iteration halves its error
    per step: after 4 steps from sigma 2 it would still be percents off)."""
    cov = np.array([[6.0, 1.5], [1.5, 3.0]])
    image = gaussian_image((61, 61), [(30.3, 29.6, 1e4)], cov)
    stamp = image[None, 10:51, 10:51]
    m = adaptive_moments_of_stamps(stamp, 0.0, 0.0, 2.0, max_iter=4)
    assert not m["failed"][0]
    assert (m["ixx"][0], m["iyy"][0], m["ixy"][0]) == pytest.approx((6.0, 3.0, 1.5), rel=1e-5)
    assert (m["dx"][0], m["dy"][0]) == pytest.approx((0.3, -0.4), abs=1e-5)


def test_adaptive_moments_of_a_moffat_are_the_plain_iterations_fixed_point():
    """Not Gaussian: the accelerated iteration must reach the fixed point of C <- 2M, computed
    independently by repo.psf.adaptive_sigma."""
    yy, xx = np.mgrid[:41, :41] - 20.0
    moffat = (1.0 + (xx**2 + 0.8 * yy**2) / 3.0**2) ** -3.0
    m = adaptive_moments_of_stamps(moffat[None], 0.0, 0.0, 2.0)
    assert not m["failed"][0]
    det = m["ixx"][0] * m["iyy"][0] - m["ixy"][0] ** 2
    assert det**0.25 == pytest.approx(adaptive_sigma(moffat / moffat.sum()), rel=1e-6)


def test_psf_flux_pulls_follow_the_noise():
    rng = np.random.default_rng(2)
    sigma, sky_sigma = 1.8, 10.0
    stars = grid_stars(12, 30.0, 0.0, rng)
    stars[:, 2] = rng.uniform(1e3, 3e4, len(stars))
    model = gaussian_image((390, 390), stars, np.eye(2) * sigma**2)
    variance = sky_sigma**2 + model
    image = model + rng.normal(size=model.shape) * np.sqrt(variance)
    exposure = Exposure(image, np.zeros(image.shape, np.int32), variance, psf=GaussianPsf(sigma))
    catalog = detect_and_measure(exposure)
    dist, idx = cKDTree(np.c_[catalog["x"], catalog["y"]]).query(stars[:, :2])
    assert (dist < 0.5).all()  # every star found, near its position
    rows = catalog[idx]
    pull = (np.asarray(rows["psfFlux"]) - stars[:, 2]) / np.asarray(rows["psfFluxErr"])
    print(f"pull mean {pull.mean():.3f} rms {pull.std():.3f} over {pull.size} stars")
    assert abs(pull.mean()) < 0.3
    assert pull.std() == pytest.approx(1.0, abs=0.12)


def test_flags_from_mask_planes_edges_and_blends():
    stars = [(40, 40, 5e4), (100, 40, 5e4), (160, 40, 5e4), (40, 100, 5e4), (2.0, 150, 5e4)]
    stars += [(120.0, 120.0, 5e4), (127.0, 121.0, 3e4)]  # a blend
    image = gaussian_image((200, 200), stars, np.eye(2) * 2.0**2)
    mask = np.zeros(image.shape, np.int32)
    exposure = Exposure(image, mask, np.ones(image.shape), psf=GaussianPsf(2.0))
    mask[40, 100] |= exposure.bit("SAT")  # centre of star 1
    mask[43, 160] |= exposure.bit("CR")  # footprint of star 2, not its centre
    mask[100, 38] |= exposure.bits("BAD", "INTRP")  # star 3: interpolated, used
    mask[43:46, 30:50] |= exposure.bit("NO_DATA")  # ignored: star 0 loses pixels
    catalog = detect_and_measure(exposure)
    tree = cKDTree(np.c_[catalog["x"], catalog["y"]])

    def row(x, y):
        d, i = tree.query([x, y])
        assert d < 1.0
        return catalog[i]

    assert row(40, 40)["flag_edge"] and row(40, 40)["ap06Flag"]  # NO_DATA in the aperture
    assert not row(40, 100)["ap06Flag"]  # the interpolated BAD pixel is used
    assert row(100, 40)["flag_saturated"] and row(100, 40)["flag_saturatedCenter"]
    assert row(160, 40)["flag_cr"] and not row(160, 40)["flag_crCenter"]
    assert row(40, 100)["flag_bad"] and row(40, 100)["flag_interpolated"]
    edge = row(2.0, 150)
    assert edge["flag_edge"] and edge["flag_psfFlux"] and edge["ap09Flag"]
    assert row(120, 120)["flag_blended"] and row(127, 121)["flag_blended"]
    assert not row(120, 120)["flag_saturated"]


def test_columns_are_documented_and_empty_images_give_empty_catalogs():
    image = np.zeros((64, 64))
    exposure = Exposure(image, np.zeros(image.shape, np.int32), np.ones(image.shape))
    catalog = detect_and_measure(exposure)
    assert len(catalog) == 0
    assert set(SOURCE_COLUMNS) <= set(catalog.colnames)
    for name in catalog.colnames:
        assert catalog[name].description, name
    assert "ap09Flux" in catalog.colnames and "ap25FluxErr" in catalog.colnames
    assert str(catalog["x"].unit) == "pix" and str(catalog["ixx"].unit) == "pix2"
    back = read_catalog(write_catalog(catalog), "src")  # the src dataset's Parquet form
    assert back.colnames == catalog.colnames
    assert back["psfFlux"].description == catalog["psfFlux"].description
    for bad in ({"threshold": 0.0}, {"filter_type": "fft"}, {"aperture_radii": (9.0, 9.2)}):
        with pytest.raises(DrpError):
            MeasurementConfig(**bad)


# ------------------------------------------------------------------------- the simulated survey
@pytest.fixture(scope="module")
def survey():
    config = SurveyConfig.from_preset("tiny", seed=SEED)
    plan = make_plan(config)
    return plan, make_sky(config, plan)


def calibrated(plan, sky, visit, detector):
    """ISR with the camera's true calibrations, minus the true sky: (Exposure, truth)."""
    exposure, truth, _ = isr_with_true_calibrations(plan, sky, visit, detector)
    return exposure, truth


def with_star_grid(plan, sky, visit, detector, mags, spacing=28.0, seed=0):
    """The survey's galaxies plus stars on a jittered grid (electrons known from the truth)."""
    rng = np.random.default_rng(seed)
    size = plan.camera.detector(detector).nx
    centres = np.arange(spacing / 2, size - spacing / 4, spacing)
    x, y = np.meshgrid(centres, centres)
    x = x.ravel() + rng.uniform(-3, 3, x.size)
    y = y.ravel() + rng.uniform(-3, 3, y.size)
    c = visit.conditions
    ra, dec = plan.camera.pixel_to_sky(detector, x, y, c.true_ra, c.true_dec, c.true_rotation)
    stars = Table(sky.stars[: x.size], copy=True)
    stars["ra"], stars["dec"] = ra, dec
    stars["pm_ra"] = stars["pm_dec"] = 0.0
    m = rng.uniform(*mags, x.size)
    for band in "gri":
        stars[f"mag_{band}"] = m
    stars["is_variable"] = False
    return dataclasses.replace(
        sky, stars=stars, transients=sky.transients[:0], asteroids=sky.asteroids[:0]
    )


@pytest.fixture(scope="module")
def measured_fields(survey):
    """Per visit (Moffat index 3.5 and 4.5): a bright star grid (16.5-19 mag) with the survey's
    galaxies, its PSF fitted and its sources measured; and two faint star grids (19.5-22 mag,
    30 pixels apart so that neighbours' wings stay well under the noise, no galaxies) of the
    same visit and detector measured with that PSF."""
    plan, sky = survey
    out = []
    for visit in plan.visits[2:4]:
        bright_sky = with_star_grid(plan, sky, visit, 0, (16.5, 19.0))
        exposure, truth = calibrated(plan, bright_sky, visit, 0)
        optical = optical_field(plan.camera, 0, visit.band, exposure.shape)
        exposure.psf = determine_psf(exposure, detect_and_measure(exposure), optical).psf
        faint = []
        for seed in (1, 2):
            faint_sky = with_star_grid(plan, sky, visit, 0, (19.5, 22.0), spacing=30.0, seed=seed)
            faint_sky = dataclasses.replace(faint_sky, galaxies=sky.galaxies[:0])
            faint_exposure, faint_truth = calibrated(plan, faint_sky, visit, 0)
            faint_exposure.psf = exposure.psf
            faint.append((faint_truth, detect_and_measure(faint_exposure)))
        out.append(((truth, detect_and_measure(exposure)), faint))
    return out


def _matched_isolated_stars(truth, catalog, isolation=12.0):
    """Truth stars with no other truth source within ``isolation`` pixels, and their sources."""
    xy = np.c_[truth["x"], truth["y"]]
    neighbour, _ = cKDTree(xy).query(xy, k=2)
    keep = (truth["source_type"] == "star") & (neighbour[:, 1] > isolation) & ~truth["saturated"]
    stars = truth[keep]
    dist, idx = cKDTree(np.c_[catalog["x"], catalog["y"]]).query(np.c_[stars["x"], stars["y"]])
    found = dist < 1.5
    return stars, found, catalog[idx]


def _unflagged(truth, catalog, isolation=12.0):
    """Matched isolated truth stars whose sources carry no flag: (true electrons, sources)."""
    stars, found, rows = _matched_isolated_stars(truth, catalog, isolation)
    flags = np.any([rows[c] for c in catalog.colnames if c.startswith("flag")], axis=0)
    ok = found & ~flags
    return stars[ok], rows[ok]


def test_psf_flux_and_centroids_against_truth(measured_fields):
    ratios, pulls, offsets, centroid_pulls = [], [], [], []
    for (truth, catalog), faint in measured_fields:
        stars, rows = _unflagged(truth, catalog)
        ratios.append(np.asarray(rows["psfFlux"]) / np.asarray(stars["flux_electrons"]))
        offsets.append(np.c_[rows["x"] - stars["x"], rows["y"] - stars["y"]])
        for faint_truth, faint_catalog in faint:
            stars, rows = _unflagged(faint_truth, faint_catalog)
            flux, err = np.asarray(rows["psfFlux"]), np.asarray(rows["psfFluxErr"])
            pulls.append((flux - np.asarray(stars["flux_electrons"])) / err)
            centroid_pulls.append((rows["x"] - stars["x"]) / rows["xErr"])
            centroid_pulls.append((rows["y"] - stars["y"]) / rows["yErr"])
    ratio, pull, offset, cpull = (
        np.concatenate(a) for a in (ratios, pulls, offsets, centroid_pulls)
    )
    print(
        f"psfFlux/true: median {np.median(ratio):.4f} over {ratio.size} bright stars; "
        f"faint-star pulls: rms {pull.std():.3f} mean {pull.mean():.3f} over {pull.size}; "
        f"bright centroid rms {np.sqrt((offset**2).mean()):.4f} pix; "
        f"faint centroid pulls rms {cpull.std():.3f}"
    )
    assert cpull.std() == pytest.approx(1.0, abs=0.15)
    assert ratio.size >= 50 and pull.size >= 150
    assert np.median(ratio) == pytest.approx(1.0, abs=0.005)
    assert pull.std() == pytest.approx(1.0, abs=0.1)
    assert -0.15 < pull.mean() < 0.15
    assert np.sqrt((offset**2).mean()) < 0.02
    assert np.abs(offset.mean(axis=0)).max() < 0.01


def test_bright_stars_are_all_detected(survey):
    plan, sky = survey
    n_bright = n_found = 0
    for visit in plan.visits:
        for detector in (0, 1):
            exposure, truth = calibrated(plan, sky, visit, detector)
            catalog = detect_and_measure(exposure)
            stars, found, _ = _matched_isolated_stars(truth, catalog, isolation=6.0)
            bright = (stars["mag"] < 21.5) & (stars["x"] > 3) & (stars["x"] < 252)
            bright &= (stars["y"] > 3) & (stars["y"] < 252)
            n_bright += bright.sum()
            n_found += (found & bright).sum()
    print(f"bright-star completeness: {n_found}/{n_bright}")
    assert n_bright >= 30 and n_found == n_bright


# ----------------------------------------------------------------------- real data: SExtractor
IMAGECAT_COLUMNS = [
    "number", "x", "y", "xwin", "ywin", "x2", "y2", "xy", "errx2", "erry2", "errxy", "a",
    "flux_aper", "fluxerr_aper", "kron_radius", "flux_auto", "fluxerr_auto",
    "fr1", "fr2", "fr3", "flags",
]  # fmt: skip


@pytest.mark.skipif(not NTT.exists(), reason="sep-ntt test data not available")
def test_sextractor_objects_and_fluxes_on_the_ntt_image():
    """SExtractor's configuration there: 1.5 sigma over the global background rms, 5 pixels,
    3x3 convolution filter, no deblending (mincont 1.0), apertures of diameter 10 pixels at the
    isophotal centroid, Kron 2.5 with no minimum radius; background 64 x 64 with a 3x3 filter."""
    data = fits.getdata(NTT / "image.fits").astype(np.float64)
    background = sep.Background(data, bw=64, bh=64, fw=3, fh=3)
    image = data - background.back()
    variance = np.full(image.shape, background.globalrms**2)
    exposure = Exposure(image, np.zeros(image.shape, np.int32), variance)
    config = MeasurementConfig(
        threshold=1.5,
        filter_type="conv",
        deblend_cont=1.0,
        clean=True,
        aperture_radii=(5.0,),
        aperture_subpix=5,
        aperture_centroid="isophotal",
        kron_min_radius=0.0,
    )
    catalog = detect_and_measure(exposure, config)
    ref = np.loadtxt(NTT / "image.cat", comments="#")
    ref = {name: ref[:, k] for k, name in enumerate(IMAGECAT_COLUMNS)}
    dist, idx = cKDTree(np.c_[catalog["xPeak"], catalog["yPeak"]]).query(
        np.c_[ref["x"] - 1, ref["y"] - 1]
    )
    found = dist < 1.0
    rows = catalog[idx]
    assert found.mean() >= 0.98
    snr_aper = ref["flux_aper"] / ref["fluxerr_aper"]
    sel = found & (snr_aper > 20)
    ap = np.asarray(rows["ap05Flux"])[sel] / ref["flux_aper"][sel] - 1
    err_auto = np.where(ref["fluxerr_auto"] > 0, ref["fluxerr_auto"], np.inf)
    sel_auto = found & (ref["flux_auto"] / err_auto > 20)
    auto = np.asarray(rows["kronFlux"])[sel_auto] / ref["flux_auto"][sel_auto] - 1
    print(
        f"NTT: {found.sum()}/{found.size} SExtractor objects recovered ({len(catalog)} found); "
        f"max |aperture - SE| {np.abs(ap).max():.2e} over {ap.size}, "
        f"max |AUTO - SE| {np.abs(auto).max():.2e} over {auto.size}"
    )
    assert ap.size >= 15 and auto.size >= 15
    assert np.abs(ap).max() < 0.01
    assert np.abs(auto).max() < 0.01
    assert np.asarray(rows["kronRadius"])[sel_auto] * 2.5 == pytest.approx(
        ref["kron_radius"][sel_auto], abs=0.011
    )


def test_saturated_stars_are_flagged(survey):
    plan, sky = survey
    visit = plan.visits[0]
    field = with_star_grid(plan, sky, visit, 0, (12.0, 19.0), spacing=48.0)
    exposure, truth = calibrated(plan, field, visit, 0)
    catalog = detect_and_measure(exposure)
    saturated = truth[truth["saturated"]]
    assert len(saturated) >= 3
    dist, idx = cKDTree(np.c_[catalog["x"], catalog["y"]]).query(
        np.c_[saturated["x"], saturated["y"]]
    )
    assert (dist < 3.0).all()
    rows = catalog[idx]
    assert rows["flag_saturated"].all() and rows["flag_saturatedCenter"].all()
    assert not select_psf_stars(catalog)[idx].any()  # never PSF stars
    unsaturated = truth[(truth["source_type"] == "star") & (truth["mag"] > 17.5)]
    dist, idx = cKDTree(np.c_[catalog["x"], catalog["y"]]).query(
        np.c_[unsaturated["x"], unsaturated["y"]]
    )
    assert not catalog[idx[dist < 1.0]]["flag_saturatedCenter"].any()


def test_measurements_in_chunks_equal_one_pass(monkeypatch):
    import stages.measure.moments as moments
    import stages.measure.psf_flux as psf_flux

    rng = np.random.default_rng(3)
    stars = grid_stars(6, 30.0, 5e3, rng)
    image = gaussian_image((200, 200), stars, np.eye(2) * 3.0) + rng.normal(size=(200, 200))
    exposure = Exposure(
        image, np.zeros(image.shape, np.int32), np.ones(image.shape), psf=GaussianPsf(1.7)
    )
    whole = detect_and_measure(exposure)
    monkeypatch.setattr(psf_flux, "CHUNK", 7)
    monkeypatch.setattr(moments, "CHUNK", 7)
    chunked = detect_and_measure(exposure)
    assert len(whole) == len(stars)
    for name in ("psfFlux", "psfFluxErr", "ixx", "ixy", "xErr", "flag_moments"):
        assert np.array_equal(whole[name], chunked[name]), name
