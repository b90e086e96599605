"""The drp command line: every repository command, its output formats and its errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cli.main import cli
from repo.repository import Repository
from tests.conftest import make_survey_records, small_catalog


def run(*args: str, ok: bool = True):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def filled(repo_url):
    run("create", repo_url)
    repo = Repository(repo_url)
    make_survey_records(repo, n_visits=6, n_detectors=2)
    run(
        "register-dataset-type",
        repo_url,
        "src",
        "--dimensions",
        "visit,detector",
        "--storage-class",
        "Catalog",
    )
    with repo.transaction():
        for v in range(1, 7):
            for d in range(2):
                repo.put(
                    small_catalog(v), "src", instrument="TestCam", visit=v, detector=d, run="run1"
                )
    return repo_url


def test_help_lists_commands_with_examples():
    out = run("--help").output
    for command in (
        "create",
        "register-dataset-type",
        "ingest",
        "query-datasets",
        "query-data-ids",
        "query-dimension-records",
        "collections",
        "remove",
        "verify",
        "compact",
        "transfer",
        "sql",
    ):
        assert command in out
        assert "Example" in run(command, "--help").output


def test_query_datasets_json(filled):
    out = run(
        "query-datasets",
        filled,
        "src",
        "--where",
        "visit IN (1..4) AND band = 'r'",
        "--format",
        "json",
    ).output
    rows = json.loads(out)
    assert {(r["visit"], r["detector"]) for r in rows} == {(1, 0), (1, 1), (3, 0), (3, 1)}
    for row in rows:
        assert {"dataset_type", "run", "id", "path", "instrument", "band"} <= row.keys()
        assert row["dataset_type"] == "src" and row["run"] == "run1"
    csv_out = run(
        "query-datasets", filled, "--where", "visit = :v", "--bind", "v=2", "--format", "csv"
    ).output.splitlines()
    assert csv_out[0].startswith("dataset_type,run,instrument") and len(csv_out) == 3


def test_query_data_ids_records_collections_sql(filled):
    out = run(
        "query-data-ids", filled, "visit", "detector", "--where", "visit = 2", "--format", "json"
    ).output
    assert [(r["visit"], r["detector"]) for r in json.loads(out)] == [(2, 0), (2, 1)]
    out = run(
        "query-dimension-records",
        filled,
        "visit",
        "--where",
        "exposure_time > 15",
        "--format",
        "json",
    ).output
    assert [r["id"] for r in json.loads(out)] == [6]
    run("collections", "chain", filled, "defaults", "run1")
    out = run("collections", filled).output
    assert "defaults" in out and "CHAINED" in out and "run1" in out
    out = run(
        "sql",
        filled,
        "SELECT visit, count(*) AS n FROM src GROUP BY visit ORDER BY visit",
        "--format",
        "json",
    ).output
    assert json.loads(out) == [{"visit": v, "n": 20} for v in range(1, 7)]


def test_errors_are_one_clear_line(filled):
    result = run("query-datasets", filled, "--where", "visit IN (1..3 AND x", ok=False)
    assert result.exit_code == 1
    assert "syntax error at column" in result.output and "Traceback" not in result.output
    result = run("query-datasets", filled, "nope", ok=False)
    assert result.exit_code == 1 and "unknown dataset type 'nope'" in result.output
    result = run("sql", filled, "DELETE FROM datasets", ok=False)
    assert result.exit_code == 1 and "read-only SELECT" in result.output
    result = run(
        "register-dataset-type",
        filled,
        "src",
        "--dimensions",
        "visit",
        "--storage-class",
        "Catalog",
        ok=False,
    )
    assert result.exit_code == 1 and "already registered" in result.output


def test_verify_remove_compact_transfer(filled, tmp_path):
    assert "0 orphan" in run("verify", filled).output
    repo = Repository(filled)
    ref = repo.query_datasets("src", where="visit = 1 AND detector = 0")[0]
    repo.storage.delete(ref.path)
    result = run("verify", filled, ok=False)
    assert result.exit_code == 1 and "missing file" in result.output
    assert (
        "would remove 1"
        in run("remove", filled, "src", "--where", "visit = 1 AND detector = 0", "--dry-run").output
    )
    run("remove", filled, "src", "--where", "visit = 1 AND detector = 0")
    assert run("verify", filled).exit_code == 0
    assert "merged" in run("compact", filled).output
    dest = str(tmp_path / "copy")
    out = run("transfer", filled, dest, "src", "--where", "visit <= 3", "--create").output
    assert "transferred 5 dataset(s)" in out
    assert len(Repository(dest).query_datasets("src")) == 5
    assert "removed run run1 with 11" in run("remove", filled, "--run", "run1").output


def test_console_script_entry_point(tmp_path):
    """The installed `drp` command works (as the README's quick start uses it)."""
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "create", str(tmp_path / "r")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and "created repository" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "create", str(tmp_path / "r")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("Error:")
    assert "already a drp repository" in proc.stderr


def test_table_output_shortens_long_values_and_says_so():
    from cli.output import MAX_CELL, format_rows

    region = "[" + ", ".join(f"[{i}.123456789, -27.987654321]" for i in range(20)) + "]"
    rows = [{"visit": 1, "region": region}]
    table = format_rows(rows, "table").splitlines()
    assert max(len(line) for line in table[:3]) <= len("visit  ") + MAX_CELL
    assert table[2].endswith("...") and table[-1].startswith(f"(values over {MAX_CELL}")
    assert json.loads(format_rows(rows, "json"))[0]["region"] == region  # whole in JSON
    assert region in format_rows(rows, "csv")
    assert "shortened" not in format_rows([{"visit": 1}], "table")


def test_ingest_says_how_files_became_datasets_and_refuses_truncated_files(tmp_path):
    import os
    import shutil
    import warnings
    from pathlib import Path

    tc6 = os.environ.get(  # as tests/test_decam.py finds the fixture
        "DRP_DECAM_TC6", Path(__file__).resolve().parents[2] / "shared/data/decam-legacypipe-tc6"
    )
    source = Path(tc6) / "images" / "decam" / "CP"
    files = sorted(str(p) for p in source.glob("*/CP20150109/*.fits"))
    assert len(files) == 3  # one CCD: image, weight and mask
    url = str(tmp_path / "repo")
    run("create", url)
    result = run("ingest", url, *files, "--run", "DECam/cp")
    assert "ingested 1 dataset(s) from 3 file(s) into DECam/cp: 1 instcal" in result.output
    assert "image, weight and mask, make one dataset" in result.output
    # a truncated copy: one clear error naming the file, no astropy warnings, nothing ingested
    folder = tmp_path / "truncated"
    folder.mkdir()
    for path in files:
        shutil.copy(path, folder)
    image = next(folder.glob("*_ooi_*"))
    image.chmod(0o644)
    image.write_bytes(image.read_bytes()[:40000])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = run("ingest", url, *sorted(map(str, folder.iterdir())), "--run", "DECam/t",
                     ok=False)  # fmt: skip
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and str(image) in result.output
    assert "truncated" in result.output
    assert "DECam/t" not in {c.name for c in Repository(url).collections()}
