"""The truth report: each figure's arithmetic on constructed images and catalogs with known
answers, nulls (never guesses) where datasets are missing, and the drp report command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.table import Table
from click.testing import CliRunner

from cli.main import cli
from repo.exposure import Exposure
from repo.repository import Repository
from stages.quality.plots import plot_report
from stages.quality.report import (
    REPORT_GOALS,
    REPORT_KEYS,
    ReportData,
    _cr_pixels,
    _matched_stars,
    _sky_noise_ratio,
    _star_core_pixels,
    format_report,
    goals_met,
    score_repository,
)

SHAPE = (120, 120)


def _exposure(sigma: float, variance: float, seed: int = 0) -> Exposure:
    rng = np.random.default_rng(seed)
    return Exposure(
        image=rng.normal(0.0, sigma, SHAPE).astype(np.float32),
        mask=np.zeros(SHAPE, np.int32),
        variance=np.full(SHAPE, variance, np.float32),
    )


def _truth(x, y, kinds=None, saturated=None) -> Table:
    n = len(x)
    return Table(
        {
            "x": np.asarray(x, float),
            "y": np.asarray(y, float),
            "ra": 10.0 + np.asarray(x, float) * 1e-4,
            "dec": np.full(n, 20.0),
            "source_type": kinds or ["star"] * n,
            "saturated": saturated or [False] * n,
            "flux_nJy": np.full(n, 1000.0),
        }
    )


def test_sky_noise_ratio_measures_noise_against_the_variance_plane():
    truth = _truth([60.0], [60.0])
    assert _sky_noise_ratio(_exposure(2.0, 4.0), truth) == pytest.approx(1.0, abs=0.02)
    # noise twice what the variance plane says
    assert _sky_noise_ratio(_exposure(4.0, 4.0), truth) == pytest.approx(2.0, abs=0.04)
    # a bright source at a true position does not count: its pixels are left out
    exposure = _exposure(2.0, 4.0)
    exposure.image[55:66, 55:66] += 500.0
    assert _sky_noise_ratio(exposure, truth) == pytest.approx(1.0, abs=0.02)


def test_cr_recall_counts_masked_pixels_above_five_sigma():
    exposure = _exposure(1.0, 1.0)
    hits = np.zeros(SHAPE, bool)
    hits[10, 10:20] = True  # 10 pixels with 100 e-: above 5 sigma
    hits[30, 10:14] = True  # 4 pixels with 3 e-: below, not counted
    charge = np.where(hits, 100.0, 0.0)
    charge[30, 10:14] = 3.0
    exposure.mask[10, 10:17] |= exposure.bit("CR")  # 7 of the 10 found
    exposure.mask[10, 19] |= exposure.bit("SAT")  # unusable: left out
    masks = {"cosmic_ray": hits, "cosmic_ray_electrons": charge}
    assert _cr_pixels(exposure, masks, np.ones(SHAPE)) == (7, 9)
    # with a flat of 25, 100 e- become 4 image units: below 5 sigma
    assert _cr_pixels(exposure, masks, np.full(SHAPE, 25.0)) == (0, 0)


def test_star_core_false_rate_counts_core_pixels_marked_cr():
    exposure = _exposure(1.0, 1.0)
    exposure.image[50, 50] = exposure.image[80, 80] = 100.0  # bright cores
    exposure.mask[49, 49] |= exposure.bit("CR")  # one core pixel wrongly marked
    truth = _truth([50.0, 80.0, 20.0], [50.0, 80.0, 20.0])  # the third is faint: not scored
    masks = {"cosmic_ray": np.zeros(SHAPE, bool)}
    assert _star_core_pixels(exposure, masks, truth) == (1, 18)
    masks["cosmic_ray"][79:82, 79:82] = True  # a real hit on a core is not a false one
    assert _star_core_pixels(exposure, masks, truth) == (1, 9)


def test_matched_stars_offsets_and_flux_ratios():
    truth = _truth([20.0, 60.0, 62.0, 100.0], [20.0, 60.0, 62.0, 100.0])
    truth["flux_nJy"] = [1000.0, 1000.0, 1000.0, 2000.0]
    src = Table(
        {
            "x": [20.3, 60.0, 100.0, 40.0],
            "y": [20.0, 60.0, 100.0, 40.0],
            "coord_ra": [10.002 + 36.0 / 3.6e6 / np.cos(np.radians(20.0)), 10.006, 10.01, 0.0],
            "coord_dec": [20.0, 20.0, 20.0 + 10.0 / 3.6e6, 20.0],
            "psfFlux": [1010.0, 1000.0, 1980.0, 500.0],
            "psfFluxErr": [1.0, 1.0, 30.0, 1.0],
            "flag_blended": [False, False, False, False],
        }
    )
    matched = _matched_stars(src, truth)
    # star 2 (60, 60) has a neighbour within 8 pixels: not isolated; (40, 40) matches nothing
    assert len(matched) == 2
    np.testing.assert_allclose(matched["offset"], [36.0, 10.0], rtol=1e-6)
    np.testing.assert_allclose(matched["ratio"], [1.01, 0.99])
    np.testing.assert_allclose(matched["snr"], [1010.0, 66.0])
    np.testing.assert_allclose(matched["dra"], [36.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(matched["ddec"], [0.0, 10.0], atol=1e-6)
    np.testing.assert_allclose(matched["mag"], [31.4 - 7.5, 31.4 - 2.5 * np.log10(2000.0)])
    np.testing.assert_allclose(matched["x"], [20.3, 100.0])


def test_figures_are_printed_beside_their_goals():
    report = dict.fromkeys(REPORT_KEYS)
    report.update(collections=["run"], n_calexps=3, astrom_rms_mas=12.5, zp_err_mmag=1.2,
                  sky_noise_ratio=0.97, cr_star_false_rate=0.0005)  # fmt: skip
    assert goals_met(report) == {
        **dict.fromkeys(REPORT_GOALS),
        "astrom_rms_mas": False,  # <= 10
        "zp_err_mmag": True,
        "sky_noise_ratio": False,  # 1 +- 0.02
        "cr_star_false_rate": True,
    }
    lines = format_report(report).splitlines()
    astrometry = next(line for line in lines if "astrom_rms_mas" in line)
    assert "12.5 mas" in astrometry and "goal <= 10 mas" in astrometry
    assert astrometry.endswith("MISSED")
    assert next(line for line in lines if "zp_err_mmag" in line).endswith("ok")
    assert "goal 1 +- 0.02" in next(line for line in lines if "sky_noise_ratio" in line)
    assert lines[-1] == "goals met: 2 of 4"


def test_missing_datasets_give_nulls_never_numbers(tmp_path):
    repo = Repository.create(str(tmp_path / "empty"))
    for run in ("SimCam/runs/demo", "SimCam/defaults"):
        repo.registry.register_run(run)
    report = score_repository(repo, ["SimCam/runs/demo", "SimCam/defaults"])
    assert all(report[key] is None for key in REPORT_KEYS)
    assert report["n_calexps"] == 0
    assert "n/a (no datasets)" in format_report(report)
    assert report["goals_met"] == dict.fromkeys(REPORT_GOALS)
    *_, goals, fallbacks = format_report(report).splitlines()
    assert goals == "goals met: 0 of 0"
    assert fallbacks == "fallbacks: PSF not fitted 0, WCS kept 0, nominal zero point 0"
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "empty"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(REPORT_KEYS) <= set(data) and all(data[k] is None for k in REPORT_KEYS)
    missing = CliRunner().invoke(cli, ["report", str(tmp_path / "nowhere")])
    assert missing.exit_code != 0
    unknown = CliRunner().invoke(cli, ["report", str(tmp_path / "empty"), "--collections", "x/y"])
    assert unknown.exit_code == 1 and "unknown collection 'x/y'" in unknown.output


def _report_data(n_stars: int) -> ReportData:
    rng = np.random.default_rng(3)
    snr = rng.uniform(50.0, 500.0, n_stars)
    stars = Table(
        {
            "x": rng.uniform(0, 100, n_stars),
            "y": rng.uniform(0, 100, n_stars),
            "dra": rng.normal(0, 4, n_stars),
            "ddec": rng.normal(0, 4, n_stars),
            "offset": np.zeros(n_stars),
            "ratio": 1.0 + rng.normal(0, 1, n_stars) / snr,
            "snr": snr,
            "mag": rng.uniform(16, 21, n_stars),
            "visit": rng.integers(1, 4, n_stars),
            "detector": rng.integers(0, 4, n_stars),
            "band": rng.choice(["g", "r"], n_stars),
        }
    )
    psf_stars = Table(
        {
            "snr": snr,
            "reserved": rng.random(n_stars) < 0.3,
            "outlier": np.zeros(n_stars, bool),
            "sizeResid": rng.normal(0, 0.004, n_stars),
            "e1Resid": rng.normal(0, 0.005, n_stars),
            "e2Resid": rng.normal(0, 0.005, n_stars),
        }
    )
    calexps = [
        {"visit": v, "detector": d, "band": "g", "zp_err_mag": 1e-3 * (v - d)}
        for v in (1, 2, 3)
        for d in range(4)
    ]
    report = {
        "n_calexps": len(calexps),
        "collections": ["a/run"],
        "calexps": calexps,
        "astrom_rms_mas": 5.6,
        "zp_err_mmag": 2.0,
        "psf_flux_ratio_median": 1.0,
        "psf_flux_pull_rms": 1.0,
        "psf_size_resid": 0.004,
        "psf_e1_resid": 0.005,
        "psf_e2_resid": 0.005,
    }
    return ReportData(report, stars, psf_stars)


@pytest.mark.parametrize("n_stars", [200, 0])
def test_report_plot_is_a_png_of_four_panels(tmp_path, n_stars):
    """With data, and with none (every panel says so instead of failing)."""
    import matplotlib.image

    data = _report_data(n_stars)
    if n_stars == 0:
        data.report["calexps"] = []
    path = plot_report(data, tmp_path / "report.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = matplotlib.image.imread(path).shape[:2]
    assert (width, height) == (1320, 1045)
