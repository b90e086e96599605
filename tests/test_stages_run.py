"""Running pipelines: exact outputs, skipping, clobbering, config changes, failure isolation,
identical outputs across executors, resume after SIGKILL, and provenance back to the raws."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from stages_toys import TESTS_DIR, make_toy_repo, toy_pipeline_yaml

from cli.main import cli
from repo.logtable import is_log_file
from repo.repository import Repository
from stages.framework.executors import run_graph
from stages.framework.graph import build_graph
from stages.framework.pipeline import Pipeline
from stages.framework.provenance import trace_provenance
from stages.framework.status import ConfigChangedError

ROOT = os.path.dirname(TESTS_DIR)
OUTPUT_TYPES = ["calexp", "src", "visitSummary", "warp", "coadd"]


def build(repo, *, where="", clobber=False, **config):
    pipeline = Pipeline.from_yaml(toy_pipeline_yaml(**config))
    return build_graph(
        repo, pipeline, output_run="out", inputs=["raw", "calib"], where=where, clobber=clobber
    )


def outputs(repo):
    """{(type, dataId): (checksum, dataset id)} of every output in the run 'out'."""
    refs = repo.query_datasets(OUTPUT_TYPES, collections="out")
    return {(r.dataset_type.name, r.data_id.canonical()): (r.checksum, r.id) for r in refs}


def read_log_file(path):
    """A registry file as an Arrow table: a commit (Arrow IPC) or a merged file (Parquet)."""
    return pq.read_table(path) if path.endswith(".parquet") else pa.ipc.open_file(path).read_all()


def log_rows(repo, table="datasets"):
    """The rows of a registry table's files (not just the current state; a writer's merges
    keep only the latest row of a key among the files they merge)."""
    folder = os.path.join(repo.storage.root, "registry", table)
    frames = [
        pl.from_arrow(read_log_file(os.path.join(folder, name)))
        for name in sorted(os.listdir(folder))
        if is_log_file(name)
    ]
    return pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame()


def check_truth(repo, graph):
    """Every output has the value the toy stages must give (raw 100v+d, bias d, gain 2)."""
    for quantum in graph.quanta.values():
        d = quantum.data_id
        if quantum.label == "calibrate":
            image = repo.get(
                "calexp", d.subset(("instrument", "visit", "detector")), collections="out"
            )
            assert np.array_equal(image, np.full((8, 8), 200.0 * d["visit"]))
        elif quantum.label == "visitSummary":
            table = repo.get(
                "visitSummary", instrument="TestCam", visit=d["visit"], collections="out"
            )
            assert table.column("detector").to_pylist() == [0, 1, 2, 3]
            assert table.column("flux").to_pylist() == [64 * 200.0 * d["visit"]] * 4
        elif quantum.label == "coadd":
            visits = [r.data_id["visit"] for r in quantum.inputs["warps"]]
            coadd = repo.get(
                "coadd", dict(d.subset(("skymap", "tract", "patch", "band"))), collections="out"
            )
            assert np.array_equal(coadd, np.full((8, 8), 200.0 * sum(visits)))


def test_run_writes_exact_outputs_then_skips_then_clobbers(repo_url):
    n_visits = 2 if "://" not in repo_url else 1  # S3 (moto) is slower: a smaller run
    repo = make_toy_repo(repo_url, n_visits=n_visits)
    graph = build(repo)
    summary = run_graph(repo, graph, jobs=1)
    assert summary.ok and summary.totals["done"] == len(graph.quanta) > 10 * n_visits
    check_truth(repo, graph)
    first = outputs(repo)
    assert len(first) == len(graph.quanta)  # one output per quantum

    # provenance of a calexp: its quantum, inputs (raw and bias), config hash, software
    ref = repo.find_dataset("calexp", instrument="TestCam", visit=1, detector=3, collections="out")
    row = repo.registry.current_datasets().filter(pl.col("dataset_id") == ref.id).row(0, named=True)
    raw = repo.find_dataset(
        "rawImage", instrument="TestCam", visit=1, detector=3, collections="raw"
    )
    bias = repo.find_dataset("bias", instrument="TestCam", detector=3, collections="calib")
    assert row["producer"] == "calibrate"
    assert row["input_ids"] == [raw.id, bias.id]
    assert row["config_hash"] == graph.pipeline.stage("calibrate").config_hash
    record = repo.registry.get_quanta([row["quantum_id"]])[row["quantum_id"]]
    assert (record.stage, record.status, record.data_id["visit"]) == ("calibrate", "done", 1)
    assert record.output_ids == [ref.id] and record.input_ids == [raw.id, bias.id]
    assert record.start <= record.end and record.pid == os.getpid()
    assert {"drp", "numpy", "astropy"} <= set(record.software)
    assert json.loads(record.config) == {
        "fail_detectors": [],
        "fail_visits": [],
        "gain": 2.0,
        "sleep": 0.0,
    }

    # the same run again: everything is skipped and nothing is written
    rows_before = len(log_rows(repo)) if repo.storage.is_local else None
    again = build(repo)
    assert {q.status for q in again.quanta.values()} == {"skip"}
    summary = run_graph(repo, again, jobs=1)
    assert summary.totals["skipped"] == len(graph.quanta) and summary.totals["done"] == 0
    assert outputs(repo) == first
    if rows_before is not None:
        assert len(log_rows(repo)) == rows_before

    # a changed config is refused, then done with clobber; outputs keep their ids
    with pytest.raises(ConfigChangedError, match=f"stage 'calibrate': {4 * n_visits} quanta"):
        build(repo, gain=3.0)
    summary = run_graph(repo, build(repo, gain=3.0, clobber=True), jobs=1)
    assert summary.totals["done"] == len(graph.quanta)
    image = repo.get("calexp", instrument="TestCam", visit=1, detector=0, collections="out")
    assert np.array_equal(image, np.full((8, 8), 300.0))
    redone = outputs(repo)
    assert {k: v[1] for k, v in redone.items()} == {k: v[1] for k, v in first.items()}
    changed = {k[0] for k in first if redone[k][0] != first[k][0]}
    assert changed == {"calexp", "src", "visitSummary", "warp", "coadd"}
    assert len(repo.registry.current_quanta()) == len(graph.quanta)


def test_removed_output_reruns_its_quantum_and_everything_downstream(tmp_path):
    repo = make_toy_repo(str(tmp_path / "repo"), n_visits=3)
    graph = build(repo)
    run_graph(repo, graph, jobs=1)
    victim = repo.find_dataset(
        "calexp", instrument="TestCam", visit=3, detector=1, collections="out"
    )
    repo.remove_datasets([victim])
    again = build(repo)
    to_run = {q.id for q in again.quanta.values() if q.status == "run"}
    producer = next(
        q
        for q in again.quanta.values()
        if q.label == "calibrate" and q.outputs["calexp"].id == victim.id
    )
    expected = {producer.id} | _downstream(again, producer.id)
    assert to_run == expected
    labels = sorted({again.quanta[q].label for q in to_run})
    assert labels == ["calibrate", "coadd", "measure", "visitSummary", "warp"]
    summary = run_graph(repo, again, jobs=1)
    assert summary.totals == {
        "done": len(expected),
        "skipped": len(again.quanta) - len(expected),
        "failed": 0,
        "blocked": 0,
    }
    check_truth(repo, again)


def _downstream(graph, start):
    down = graph.downstream()
    seen, stack = set(), list(down[start])
    while stack:
        q = stack.pop()
        if q not in seen:
            seen.add(q)
            stack.extend(down[q])
    return seen


def test_failure_is_isolated_blocks_downstream_and_exits_nonzero(tmp_path):
    repo = make_toy_repo(str(tmp_path / "repo"), n_visits=3)
    path = tmp_path / "toy.yaml"
    path.write_text(toy_pipeline_yaml())
    args = ["run", repo.storage.url, str(path), "-i", "raw,calib", "--output", "out", "-j", "1"]
    result = CliRunner().invoke(cli, [*args, "--config", "calibrate.fail_visits=[2]"])
    assert result.exit_code == 1
    graph = build(repo, fail_visits=[2])
    by_label = graph.by_label()
    down = set()
    failed = {q.id for q in by_label["calibrate"] if q.data_id["visit"] == 2}
    for qid in failed:
        down |= _downstream(graph, qid)
    expected_blocked = {graph.quanta[q].label: 0 for q in down}
    for q in down:
        expected_blocked[graph.quanta[q].label] += 1
    assert "FAILED calibrate {'instrument': 'TestCam'" in result.output
    assert "RuntimeError: visit 2 is cursed" in result.output
    total_blocked = len(down)
    assert re.search(rf"\d+ done, 0 skipped, 4 failed, {total_blocked} blocked", result.output)
    assert f"measure       {len(by_label['measure']) - 4} done, 4 blocked" in result.output
    # the independent quanta all completed; the failed ones left records with the error
    done = {q for q, s in _statuses(repo).items() if s == "done"}
    assert done == set(graph.quanta) - failed - down
    failures = repo.registry.current_quanta().filter(pl.col("status") == "failed")
    assert sorted(failures["quantum_id"].to_list()) == sorted(failed)
    assert all("visit 2 is cursed" in e for e in failures["error"].to_list())
    assert not repo.query_datasets("calexp", collections="out", where="visit = 2")
    # a rerun tries exactly the failed quanta again (and blocks the same ones)
    summary = run_graph(repo, build(repo, fail_visits=[2]), jobs=1)
    assert summary.totals == {"done": 0, "skipped": len(done), "failed": 4, "blocked": len(down)}
    # with the failing visit left out, everything selected completes
    summary = run_graph(repo, build(repo, where="visit != 2", fail_visits=[2]), jobs=1)
    assert summary.ok and summary.totals["done"] == 0


def _statuses(repo):
    frame = repo.registry.current_quanta()
    return dict(zip(frame["quantum_id"].to_list(), frame["status"].to_list(), strict=True))


def test_serial_pool_and_dask_give_identical_outputs(tmp_path):
    from distributed import Client, LocalCluster

    results = {}
    pids = {}
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        for name, kwargs in (
            ("serial", {"jobs": 1}),
            ("pool", {"jobs": 2}),
            ("dask", {"dask": cluster.scheduler_address}),  # as for a remote cluster
        ):
            repo = make_toy_repo(str(tmp_path / name), n_visits=3)
            graph = build(repo)
            summary = run_graph(repo, graph, **kwargs)
            assert summary.ok, summary.describe()
            check_truth(repo, graph)
            results[name] = {k: v[0] for k, v in outputs(repo).items()}
            pids[name] = set(repo.registry.current_quanta()["pid"].to_list())
        with Client(cluster) as client:
            worker_pids = set(client.run(os.getpid).values())
    assert results["serial"] == results["pool"] == results["dask"]
    assert len(results["serial"]) == len(graph.quanta)
    assert pids["serial"] == {os.getpid()}
    assert os.getpid() not in pids["pool"] and os.getpid() not in pids["dask"]
    # which worker takes which job is the scheduler's choice (one fast worker may take them
    # all), so only where the quanta ran is asserted: in the pool's or the cluster's processes
    assert 1 <= len(pids["pool"]) <= 2
    assert pids["dask"] and pids["dask"] <= worker_pids


def test_cli_run_on_a_local_dask_cluster(tmp_path):
    repo = make_toy_repo(str(tmp_path / "repo"), n_visits=1)
    path = tmp_path / "toy.yaml"
    path.write_text(toy_pipeline_yaml())
    result = CliRunner().invoke(
        cli,
        [
            "run",
            repo.storage.url,
            f"{path}#singleFrame",
            "-i",
            "raw,calib",
            "--output",
            "out",
            "--dask",
            "local",
            "-j",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "8 done, 0 skipped, 0 failed, 0 blocked" in result.output
    assert os.getpid() not in set(repo.registry.current_quanta()["pid"].to_list())


def test_provenance_walks_back_to_the_raws(tmp_path):
    repo = make_toy_repo(str(tmp_path / "repo"), n_visits=2)
    graph = build(repo)
    run_graph(repo, graph, jobs=1)
    coadd = max(graph.by_label()["coadd"], key=lambda q: len(q.inputs["warps"]))
    ref = coadd.outputs["coadd"]
    prov = trace_provenance(repo, [ref])
    # expected raws: the raw and bias of every detector in every warp of the coadd
    warps = [graph.quanta[u] for u in coadd.upstream]
    calexps = {r.id for w in warps for r in w.inputs["calexp"]}
    calib = [q for q in graph.by_label()["calibrate"] if q.outputs["calexp"].id in calexps]
    expected_raws = {r.id for q in calib for r in q.inputs["raw"] + q.inputs["bias"]}
    assert {n.id for n in prov.raws()} == expected_raws
    assert {r.stage for r in prov.quanta.values()} == {"coadd", "warp", "calibrate"}
    assert len(prov.quanta) == 1 + len(warps) + len(calib)
    assert prov.inputs_of(ref.id) == [
        w.outputs["warp"].id for w in sorted(warps, key=lambda w: w.data_id["visit"])
    ]
    patch = coadd.data_id["patch"]
    runner = CliRunner()
    where = f"patch = {patch} AND band = '{coadd.data_id['band']}'"
    text = runner.invoke(
        cli, ["provenance", repo.storage.url, "coadd", "--collections", "out", "--where", where]
    )
    assert text.exit_code == 0, text.output
    assert (
        text.output.splitlines()[0]
        == f"coadd skymap=toy_rings tract={coadd.data_id['tract']} patch={patch} band={coadd.data_id['band']} in out"
    )
    assert "└── quantum coadd" in text.output and "quantum calibrate" in text.output
    assert "rawImage instrument=TestCam visit=" in text.output
    assert "[put: no producing quantum]" in text.output
    data = json.loads(
        runner.invoke(
            cli,
            [
                "provenance",
                repo.storage.url,
                "coadd",
                "--collections",
                "out",
                "--where",
                where,
                "--format",
                "json",
            ],
        ).output
    )
    assert data["roots"] == [ref.id]
    assert {k for k, v in data["datasets"].items() if v["quantum_id"] is None} == expected_raws
    shallow = trace_provenance(repo, [ref], max_depth=1)
    assert set(shallow.quanta) == {coadd.id}
    missing = runner.invoke(cli, ["provenance", repo.storage.url, "coadd", "--where", "patch = 0"])
    assert missing.exit_code == 1 and "no coadd datasets match patch = 0" in missing.output


SLOW_RUN = [sys.executable, "-m", "cli.main", "run"]


def test_resume_after_sigkill_runs_exactly_the_missing_quanta(tmp_path):
    repo = make_toy_repo(str(tmp_path / "repo"), n_visits=4)
    path = tmp_path / "toy.yaml"
    path.write_text(toy_pipeline_yaml())
    command = [
        *SLOW_RUN,
        repo.storage.url,
        f"{path}#singleFrame",
        "-i",
        "raw,calib",
        "--output",
        "out",
        "-j",
        "2",
        "--config",
        "calibrate.sleep=0.25",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, TESTS_DIR])}
    quanta_dir = os.path.join(repo.storage.root, "registry", "quanta")
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        done = os.listdir(quanta_dir) if os.path.isdir(quanta_dir) else []
        if len([n for n in done if is_log_file(n)]) >= 6 or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: the run and its workers
    proc.wait()
    total = 32
    crashed = Repository(repo.storage.url)
    present = len(crashed.query_datasets(["calexp", "src"], collections="out"))
    assert 0 < present < total
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{total - present} done, {present} skipped, 0 failed, 0 blocked" in rerun.stdout
    final = Repository(repo.storage.url)
    refs = final.query_datasets(["calexp", "src"], collections="out")
    assert len(refs) == total
    puts = log_rows(final).filter(pl.col("op") == "put")
    counts = puts.group_by("dataset_id").len()
    outputs_ids = {r.id for r in refs}
    written = counts.filter(pl.col("dataset_id").is_in(list(outputs_ids)))
    assert len(written) == total and written["len"].max() == 1  # each output committed once
    quanta = final.registry.current_quanta()
    assert len(quanta) == total and set(quanta["status"].to_list()) == {"done"}
    report = final.verify()
    assert report.ok, report  # a killed write's temporary file is listed, not a fault
    assert all(".tmp-" in path for path in report.temporary)
    pipeline = Pipeline.load(f"{path}#singleFrame", ["calibrate.sleep=0.25"])
    graph = build_graph(final, pipeline, output_run="out", inputs=["raw", "calib"])
    assert {q.status for q in graph.quanta.values()} == {"skip"}


def test_log_progress_reports_each_tenth_failures_and_completion():
    import io

    from stages.framework.progress import LogProgress, TqdmProgress, make_progress

    out = io.StringIO()
    progress = LogProgress(out)
    progress.start({"a": 20, "b": 0, "c": 1, "d": 79})
    for i in range(20):
        progress.advance("a", "failed" if i == 3 else "done", "{'visit': 4}: boom")
    progress.advance("c", "blocked")
    for _ in range(79):
        progress.advance("d", "done")
    progress.finish()
    lines = out.getvalue().splitlines()
    assert lines[0] == "running 100 quanta: a 20, c 1, d 79"
    assert lines[1] == "a: FAILED {'visit': 4}: boom"
    tenths = [line for line in lines if "quanta finished (" in line and "%" in line]
    assert len(tenths) == 9  # 10% .. 90%; the stages' own lines say the end
    assert re.fullmatch(r"10/100 quanta finished \(10%\) in \d+\.\d s", tenths[0])
    assert lines.index(tenths[0]) < lines.index("a: all 20 quanta finished (19 done, 1 failed)")
    assert "c: all 1 quanta finished (0 done, 1 blocked)" in lines
    assert lines[-1] == "d: all 79 quanta finished (79 done)"
    assert len(lines) == 1 + 1 + 9 + 3
    assert isinstance(make_progress(io.StringIO()), LogProgress)

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert isinstance(make_progress(Terminal()), TqdmProgress)


def test_worker_repository_is_cached_and_reopened_periodically(tmp_path):
    from stages.framework import runner

    url = str(tmp_path / "repo")
    Repository.create(url)
    first = runner.worker_repository(url)
    assert runner.worker_repository(url) is first
    for _ in range(runner.REOPEN_EVERY - 2):
        assert runner.worker_repository(url) is first
    assert runner.worker_repository(url) is not first  # a fresh one: its memory stays small


def test_verify_repairs_lost_files_and_lost_records(tmp_path):
    repo = make_toy_repo(str(tmp_path / "repo"), n_visits=2)
    path = tmp_path / "toy.yaml"
    path.write_text(toy_pipeline_yaml())
    pipeline = Pipeline.load(f"{path}#singleFrame")

    def graph():
        return build_graph(repo, pipeline, output_run="out", inputs=["raw", "calib"])

    assert run_graph(repo, graph(), jobs=1).ok
    runner = CliRunner()
    url = repo.storage.url
    # a lost file: verify says so, a run alone would call it done; forgetting it makes it redone
    lost = repo.find_dataset("calexp", instrument="TestCam", visit=2, detector=3, collections="out")
    os.remove(os.path.join(url, lost.path))
    result = runner.invoke(cli, ["verify", url])
    assert (
        result.exit_code == 1 and f"missing file: {os.path.join(url, lost.path)}" in result.output
    )
    assert {q.status for q in graph().quanta.values()} == {"skip"}
    result = runner.invoke(cli, ["verify", url, "--forget-missing"])
    assert result.exit_code == 0, result.output
    assert "forgot 1 dataset(s) whose file is missing" in result.output
    again = graph()
    assert sorted(str(q) for q in again.quanta.values() if q.status == "run") == [
        "calibrate {'instrument': 'TestCam', 'visit': 2, 'detector': 3}",
        "measure {'instrument': 'TestCam', 'visit': 2, 'detector': 3}",
    ]
    assert run_graph(repo, again, jobs=1).totals["done"] == 2
    image = repo.get("calexp", instrument="TestCam", visit=2, detector=3, collections="out")
    assert np.array_equal(image, np.full((8, 8), 400.0))
    # a registry file moved aside: its datasets are orphans, recorded again from their paths
    # with the provenance their quantum records still hold
    folder = os.path.join(url, "registry", "datasets")
    moved = []
    for name in sorted(n for n in os.listdir(folder) if is_log_file(n)):
        table = read_log_file(os.path.join(folder, name)).to_pydict()
        first_run_outputs = (
            set(table["visit"]) == {1}
            and set(table["op"]) == {"put"}
            and set(table["dataset_type"]) <= {"calexp", "src"}
        )
        if first_run_outputs:
            moved += table["dataset_id"]
            os.rename(os.path.join(folder, name), os.path.join(tmp_path, name))
    fresh = Repository(url)
    report = fresh.verify()
    assert len(report.orphans) == len(moved) == 8 and not report.ok  # 4 calexps, 4 src
    result = runner.invoke(cli, ["verify", url, "--register-orphans"])
    assert result.exit_code == 0, result.output
    assert "recorded again 8 orphan file(s); 0 left as orphans" in result.output
    current = Repository(url).registry.current_datasets()
    rows = current.filter(pl.col("dataset_id").is_in(moved)).to_dicts()
    assert len(rows) == 8 and {r["producer"] for r in rows} == {"calibrate", "measure"}
    assert all(r["config_hash"] == pipeline.stage(r["producer"]).config_hash for r in rows)
    assert {q.status for q in graph().quanta.values()} == {"skip"}
    # a stray file whose path is not one drp writes stays an orphan
    stray = os.path.join(url, "out", "calexp", "stray.fits")
    with open(stray, "wb") as f:
        f.write(b"not a dataset")
    result = runner.invoke(cli, ["verify", url, "--register-orphans"])
    assert result.exit_code == 1 and "0 left" not in result.output
    assert "recorded again 0 orphan file(s); 1 left as orphans" in result.output


def test_workers_keep_the_registry_small_as_jobs_commit(tmp_path):
    """160 jobs, two workers merging files as they go (concurrently at times): a fresh reader
    opens a few dozen registry files, not 160 of each table, and no row is lost."""
    from repo.logtable import MERGE_TIERS

    repo = make_toy_repo(str(tmp_path / "repo"), n_visits=20)
    pipeline = Pipeline.from_yaml(toy_pipeline_yaml()).subset("singleFrame")
    graph = build_graph(repo, pipeline, output_run="out", inputs=["raw", "calib"])
    assert len(graph.jobs()) == 160
    assert run_graph(repo, graph, jobs=2).ok
    limit = sum(most for _, most in MERGE_TIERS) + 4
    for table in ("datasets", "quanta"):
        folder = os.path.join(repo.storage.root, "registry", table)
        files = [n for n in os.listdir(folder) if is_log_file(n)]
        assert len(files) <= limit, (table, len(files))
    fresh = Repository(repo.storage.url)
    assert len(fresh.query_datasets(["calexp", "src"], collections="out")) == 160
    assert len(fresh.registry.current_quanta()) == 160
    assert fresh.verify().ok
    assert {q.status for q in build_graph(fresh, pipeline, output_run="out",
            inputs=["raw", "calib"]).quanta.values()} == {"skip"}  # fmt: skip


def test_inputs_read_by_several_quanta_are_decoded_once_per_worker_and_run(tmp_path, monkeypatch):
    from stages.framework import runner

    repo = make_toy_repo(str(tmp_path / "repo"), n_visits=3)
    pipeline = Pipeline.from_yaml(toy_pipeline_yaml()).subset("singleFrame")
    graph = build_graph(repo, pipeline, output_run="out", inputs=["raw", "calib"])
    biases = {r.id for q in graph.quanta.values() for r in q.inputs.get("bias", ())}
    assert biases and biases <= graph.shared_inputs  # each bias is read by 3 calibrate quanta
    reads = []
    original = Repository.read
    monkeypatch.setattr(
        Repository, "read", lambda self, ref: reads.append(ref.id) or original(self, ref)
    )
    assert run_graph(repo, graph, jobs=1).ok
    assert sum(r in biases for r in reads) == 4  # once per detector, not once per quantum
    check_truth(repo, graph)  # every quantum got the right bias (its own copy)
    # another run (a new graph) reads them again: they may have been rewritten in between
    again = build_graph(repo, pipeline, output_run="out2", inputs=["raw", "calib"])
    reads.clear()
    assert run_graph(repo, again, jobs=1).ok
    assert sum(r in biases for r in reads) == 4
    assert len(runner._SHARED_INPUTS) <= runner.SHARED_INPUTS_KEPT
