"""The embedded default: `drp demo` on the tiny preset, resuming, and ingesting its raws."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from astropy.io import fits
from click.testing import CliRunner

from cli.main import cli
from repo.errors import DrpError
from repo.ingest import ingest
from repo.repository import Repository
from stages.simulate import SurveyConfig, make_plan


@pytest.fixture(scope="module")
def demo_repo(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("demo") / "repo")
    result = CliRunner().invoke(
        cli, ["demo", path, "--preset", "tiny", "-j", "2"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return path, result.output


def test_tiny_demo_writes_the_survey(demo_repo):
    path, output = demo_repo
    plan = make_plan(SurveyConfig.from_preset("tiny"))
    n_exposures = len(plan.visits) + len(plan.calibrations)
    n_detectors = len(plan.camera.detectors)
    repo = Repository(path)
    assert len(repo.query_datasets("raw")) == n_exposures * n_detectors
    assert len(repo.query_datasets("truth")) == len(plan.visits) * n_detectors
    science = repo.query_datasets("raw", where="visit.observation_type = 'science'")
    assert len(science) == len(plan.visits) * n_detectors
    flats = repo.query_data_ids(["visit"], where="visit.observation_type = 'flat' AND band = 'r'")
    assert len(flats) == plan.config.n_flat
    assert f"{n_exposures * n_detectors} raws simulated, 0 already there" in output
    assert repo.verify().ok
    # a raw is a real multi-extension FITS file with one HDU per amplifier
    raw = repo.get(science[0])
    assert raw[0].header["INSTRUME"] == "SimCam"
    assert len(raw) == 1 + len(plan.camera.detector(0).amplifiers)
    regions = repo.query_dimension_records("visit_detector_region")
    assert len(regions) == len(plan.visits) * n_detectors


def test_demo_resumes_and_refuses_another_survey(demo_repo):
    path, _ = demo_repo
    again = CliRunner().invoke(cli, ["demo", path, "--preset", "tiny", "-j", "1"])
    assert again.exit_code == 0, again.output
    assert "simulation: all 32 raws already there" in again.output
    assert "0 done" in again.output  # every quantum skipped
    other = CliRunner().invoke(cli, ["demo", path, "--preset", "tiny", "--seed", "7"])
    assert other.exit_code == 1
    assert "another configuration" in other.output and "'seed': (1, 7)" in other.output


@pytest.mark.parametrize("transfer", ["copy", "link", "direct"])
def test_ingest_raw_files(demo_repo, tmp_path, transfer):
    """SimCam raws written as files are ingested by copy, hard link or left in place."""
    source = Repository(demo_repo[0])
    refs = source.query_datasets("raw", where="visit.observation_type = 'science'")[:3]
    files = []
    for ref in refs:
        out = tmp_path / os.path.basename(ref.path)
        out.write_bytes(source.storage.get_bytes(ref.path))
        files.append(str(out))
    repo = Repository.create(str(tmp_path / "ingested"))
    ingested = ingest(repo, files, run="SimCam/raw", transfer=transfer)
    assert sorted((r.data_id["visit"], r.data_id["detector"]) for r in ingested) == sorted(
        (r.data_id["visit"], r.data_id["detector"]) for r in refs
    )
    for ref, path in zip(
        sorted(ingested, key=lambda r: r.data_id["visit"] * 10 + r.data_id["detector"]),
        sorted(files, key=lambda f: _key(f)),
        strict=True,
    ):
        got = repo.get(ref)
        with fits.open(path) as expected:
            assert (got[1].data == expected[1].data).all()
        if transfer == "direct":
            assert ref.path == "file://" + path
        else:
            stored = repo.storage.full_path(ref.path)
            assert Path(stored).read_bytes() == Path(path).read_bytes()
            if transfer == "link":
                assert os.stat(stored).st_ino == os.stat(path).st_ino
    assert repo.verify().ok
    with pytest.raises(DrpError, match="already exists"):
        ingest(repo, files[:1], run="SimCam/raw", transfer=transfer)
    assert len(ingest(repo, files, run="SimCam/raw", transfer=transfer, mode="skip")) == 3


def _key(path: str) -> int:
    header = fits.getheader(path, 0)
    return int(header["EXPNUM"]) * 10 + int(header["CCDNUM"]) if "EXPNUM" in header else 0


def test_ingest_bad_files_is_clear_and_changes_nothing(tmp_path):
    repo = Repository.create(str(tmp_path / "r"))
    bad = tmp_path / "bad.fits"
    bad.write_bytes(b"this is not FITS")
    with pytest.raises(DrpError, match="bad.fits"):
        ingest(repo, [str(bad)], run="x", instrument="SimCam")
    with pytest.raises(DrpError, match="no such file"):
        ingest(repo, [str(tmp_path / "missing.fits")], run="x")
    assert repo.query_datasets() == []
    assert repo.verify().ok


def test_tiny_demo_coadds_every_patch_and_band_it_covers(demo_repo, tmp_path):
    """The demo warps and co-adds: one deepCoadd per overlapped patch and band, the patch's WCS
    in a FITS file that fitsverify passes, fluxes in nJy against truth in the report."""
    import shutil
    import subprocess

    from astropy.wcs import WCS

    from stages.framework.skymap_setup import load_skymap

    path, output = demo_repo
    repo = Repository(path)
    coadds = repo.query_datasets("deepCoadd", collections="SimCam/runs/demo")
    warps_expected = repo.query_datasets("calexp", collections="SimCam/runs/demo")
    bands = {r.data_id["band"] for r in warps_expected}
    assert coadds and {r.data_id["band"] for r in coadds} == bands
    assert not repo.query_datasets("deepCoadd_warp", collections="SimCam/runs/demo")  # in memory
    skymap = load_skymap(repo)
    ref = coadds[0]
    patch = skymap.patch(ref.data_id["tract"], ref.data_id["patch"])
    local = tmp_path / "coadd.fits"
    local.write_bytes(repo.storage.get_bytes(ref.path))
    with fits.open(local) as hdul:
        wcs = WCS(hdul[1].header)
        assert hdul[1].data.shape == (patch.bbox[3], patch.bbox[2])
    x, y = 123.0, 456.0
    assert wcs.pixel_to_world_values(x, y) == pytest.approx(patch.wcs.pixel_to_world_values(x, y))
    if shutil.which("fitsverify"):
        done = subprocess.run(["fitsverify", "-q", str(local)], capture_output=True, text=True)
        assert done.returncode == 0 and "verification OK" in done.stdout, done.stdout
    coadd = repo.get(ref)
    inputs = repo.get("deepCoadd_inputs", ref.data_id, collections="SimCam/runs/demo")
    assert inputs.num_rows == len(coadd.psf.inputs) >= 2
    assert coadd.metadata["BUNIT"] == "nJy" and coadd.photo_calib.zero_point == pytest.approx(31.4)
    # the report scored the co-adds against truth
    line = next(row for row in output.splitlines() if "coadd_flux_ratio_median" in row)
    assert line.rstrip().endswith("ok")
