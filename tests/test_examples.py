"""The examples run as documented."""

import subprocess
import sys
from ast import literal_eval
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_python_api_example(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "python_api.py"), str(tmp_path / "repo")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "visit 3 detector 1: 50 rows" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.startswith("{'band'")]
    assert [literal_eval(r)["visit"] for r in rows] == [1, 2, 3, 4]
    assert all(literal_eval(r)["n"] == 100 for r in rows)


def test_shared_s3_example(s3_endpoint):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "shared_s3_repository.py"),
            "--writers",
            "2",
            "--puts",
            "5",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "10 datasets from 2 writers x 5 puts" in proc.stdout
    assert "verify: OK" in proc.stdout
