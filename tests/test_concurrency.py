"""Several writer processes on one S3 repository, and writers killed mid-put (crash injection)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from repo.repository import Repository
from tests.conftest import make_survey_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WRITER = textwrap.dedent(
    """
    import sys
    from repo.repository import Repository
    from tests.conftest import small_catalog

    url, worker, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    repo = Repository(url)
    table = small_catalog(worker, n=3)
    for i in range(count):
        # one commit per put: the worst case for the registry
        repo.put(table, "cat", instrument="TestCam", visit=1 + worker, detector=i, run="conc")
    """
)


def _prepare(url: str, n_detectors: int) -> Repository:
    repo = Repository.create(url)
    make_survey_records(repo, n_detectors=n_detectors)
    repo.register_dataset_type("cat", ["visit", "detector"], "Catalog")
    return repo


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_four_writers_lose_nothing_on_s3(s3_bucket):
    """4 processes x 250 puts into one S3 repository give exactly 1000 records and files."""
    url = f"s3://{s3_bucket}/shared"
    _prepare(url, n_detectors=250)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, url, str(w), "250"], env=_env(), stderr=subprocess.PIPE
        )
        for w in range(4)
    ]
    # compact concurrently with the writers: it must not lose a row either
    import time

    compactor = Repository(url)
    compactions = 0
    while any(p.poll() is None for p in procs):
        merged, _rows = compactor.compact()["datasets"]
        compactions += merged > 0
        time.sleep(0.5)
    assert compactions >= 2  # compaction really ran while the writers were writing
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()[-2000:]
    repo = Repository(url)
    refs = repo.query_datasets("cat")
    assert len(refs) == 1000
    assert {(r.data_id["visit"], r.data_id["detector"]) for r in refs} == {
        (1 + w, i) for w in range(4) for i in range(250)
    }
    repo.compact()
    fresh = Repository(url)
    assert len(fresh.query_datasets("cat")) == 1000
    report = fresh.verify(checksums=False)
    assert report.ok, report


CRASHER = textwrap.dedent(
    """
    import os, signal, sys
    from repo.registry import Registry
    from repo.repository import Repository
    from tests.conftest import small_catalog

    url = sys.argv[1]
    repo = Repository(url)
    repo.put(small_catalog(1), "cat", instrument="TestCam", visit=1, detector=0, run="crash")

    def die(self, rows):  # the process dies after the file is written, before its record
        os.kill(os.getpid(), signal.SIGKILL)

    Registry.commit_datasets = die
    repo.put(small_catalog(2), "cat", instrument="TestCam", visit=1, detector=1, run="crash")
    """
)


def test_writer_killed_between_file_and_record(repo_url):
    repo = _prepare(repo_url, n_detectors=4)
    proc = subprocess.run(
        [sys.executable, "-c", CRASHER, repo_url], env=_env(), capture_output=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    repo = Repository(repo_url)
    refs = repo.query_datasets("cat")
    assert [r.data_id["detector"] for r in refs] == [0]  # no record without its file
    report = repo.verify()
    assert report.missing == [] and report.bad_checksum == []
    leftover = repo.make_ref("cat", {"instrument": "TestCam", "visit": 1, "detector": 1}, "crash")
    assert report.orphans == [repo.storage.uri(leftover.path)]
    # re-running the same put completes the work and the repository is clean again
    from tests.conftest import small_catalog

    repo.put(small_catalog(2), "cat", instrument="TestCam", visit=1, detector=1, run="crash")
    assert len(repo.query_datasets("cat")) == 2
    assert repo.verify().ok


COMPACT_CRASHER = textwrap.dedent(
    """
    import os, signal, sys
    from repo.repository import Repository
    from repo.storage import Storage

    repo = Repository(sys.argv[1])
    calls = []
    original = Storage.delete

    def delete(self, relpath, **kw):  # die after the merged file is written, mid-deletion
        calls.append(relpath)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, relpath, **kw)

    Storage.delete = delete
    repo.compact()
    """
)


@pytest.mark.parametrize("repo_url", ["local"], indirect=True)
def test_compaction_killed_midway_loses_nothing(repo_url):
    repo = _prepare(repo_url, n_detectors=4)
    from tests.conftest import small_catalog

    for d in range(4):
        repo.put(small_catalog(d), "cat", instrument="TestCam", visit=2, detector=d, run="r")
    proc = subprocess.run(
        [sys.executable, "-c", COMPACT_CRASHER, repo_url],
        env=_env(),
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    fresh = Repository(repo_url)
    assert sorted(r.data_id["detector"] for r in fresh.query_datasets("cat")) == [0, 1, 2, 3]
    fresh.compact()
    assert sorted(r.data_id["detector"] for r in Repository(repo_url).query_datasets("cat")) == [
        0,
        1,
        2,
        3,
    ]
    assert fresh.verify().ok
