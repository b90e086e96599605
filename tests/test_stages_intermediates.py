"""Intermediates handed over in memory: jobs of chained quanta, nothing of them written unless
kept, re-runs that redo exactly what is missing (also after kill -9 of the driver alone),
failures inside a chain, and provenance through a dataset that was never written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import polars as pl
import pytest
from stages_toys import TESTS_DIR, make_toy_repo, toy_pipeline_yaml
from test_stages_run import log_rows

from repo.logtable import is_log_file
from repo.repository import Repository
from stages.framework.executors import run_graph
from stages.framework.graph import build_graph
from stages.framework.pipeline import Pipeline, PipelineError
from stages.framework.provenance import trace_provenance

ROOT = os.path.dirname(TESTS_DIR)
CHAIN = toy_pipeline_yaml(intermediates=("calexp",))


def build(repo, selection="#singleFrame", keep=False, clobber=False, **config):
    pipeline = Pipeline.from_yaml(toy_pipeline_yaml(intermediates=("calexp",), **config))
    if selection:
        pipeline = pipeline.subset(selection[1:])
    return build_graph(
        repo,
        pipeline,
        output_run="out",
        inputs=["raw", "calib"],
        keep_intermediates=keep,
        clobber=clobber,
    )


def src_fluxes(repo):
    """{(visit, detector): flux} of the src catalogs in 'out'."""
    refs = repo.query_datasets("src", collections="out")
    return {
        (r.data_id["visit"], r.data_id["detector"]): repo.get(r).column("flux")[0].as_py()
        for r in refs
    }


def test_intermediates_must_be_produced_by_the_pipeline():
    with pytest.raises(PipelineError, match=r"intermediates \['icExp'\] are produced by no stage"):
        Pipeline.from_yaml(toy_pipeline_yaml(intermediates=("icExp",)))
    full = Pipeline.from_yaml(CHAIN)
    assert full.intermediates == ["calexp"]
    assert full.subset("coaddition").intermediates == []  # produced outside the subset
    assert "intermediates (in memory" in full.describe()
    assert Pipeline.load("drp").intermediates == [
        "flatUnnormalized",
        "postISRCCD",
        "icExp",
        "deepCoadd_warp",
    ]


@pytest.mark.parametrize("jobs", [1, 2])
def test_chain_hands_over_in_memory_and_writes_nothing_of_it(tmp_path, jobs):
    repo = make_toy_repo(str(tmp_path / "repo"), n_visits=2)
    graph = build(repo)
    chains = graph.jobs()
    assert len(chains) == 8  # one per (visit, detector): calibrate then measure
    assert all([graph.quanta[q].label for q in job] == ["calibrate", "measure"] for job in chains)
    assert all(graph.quanta[job[0]].transient == {"calexp"} for job in chains)
    assert "in memory, not written: calexp" in graph.describe()
    summary = run_graph(repo, graph, jobs=jobs)
    assert summary.ok and summary.totals["done"] == 16, summary.describe()
    # measure got calibrate's image: flux = 64 pixels of (100 v + d - d) * gain 2
    assert src_fluxes(repo) == {(v, d): 64 * 200.0 * v for v in (1, 2) for d in range(4)}
    assert not repo.query_datasets("calexp", collections="out")
    assert not os.path.exists(os.path.join(repo.storage.root, "out", "calexp"))
    # one registry commit per chain, not per quantum
    assert len(os.listdir(os.path.join(repo.storage.root, "registry", "quanta"))) == 8
    # every quantum is recorded, calibrate with the id of the calexp it handed over
    quanta = repo.registry.current_quanta()
    assert len(quanta) == 16 and set(quanta["status"]) == {"done"}
    # nothing to do again, though no calexp exists
    assert {q.status for q in build(repo).quanta.values()} == {"skip"}


def test_keep_intermediates_writes_them_with_the_same_results(tmp_path):
    repo = make_toy_repo(str(tmp_path / "repo"), n_visits=2)
    graph = build(repo, keep=True)
    assert not any(q.transient for q in graph.quanta.values())
    assert len(graph.jobs()) == 16  # nothing in memory: every quantum on its own
    assert run_graph(repo, graph, jobs=1).ok
    assert src_fluxes(repo) == {(v, d): 64 * 200.0 * v for v in (1, 2) for d in range(4)}
    calexp = repo.get("calexp", instrument="TestCam", visit=2, detector=3, collections="out")
    assert np.array_equal(calexp, np.full((8, 8), 400.0))
    assert len(repo.query_datasets("calexp", collections="out")) == 8
    # a later in-memory build reads the kept calexps: nothing to redo
    assert {q.status for q in build(repo).quanta.values()} == {"skip"}


def test_missing_output_reruns_its_whole_chain_only(tmp_path):
    repo = make_toy_repo(str(tmp_path / "repo"), n_visits=2)
    run_graph(repo, build(repo), jobs=1)
    victim = repo.find_dataset("src", instrument="TestCam", visit=2, detector=1, collections="out")
    repo.remove_datasets([victim])
    again = build(repo)
    to_run = [q for q in again.quanta.values() if q.status == "run"]
    # measure must run, and its calexp was never written: calibrate runs again too
    assert sorted((q.label, q.data_id["visit"], q.data_id["detector"]) for q in to_run) == [
        ("calibrate", 2, 1),
        ("measure", 2, 1),
    ]
    summary = run_graph(repo, again, jobs=1)
    assert summary.totals == {"done": 2, "skipped": 14, "failed": 0, "blocked": 0}
    assert src_fluxes(repo)[(2, 1)] == 64 * 400.0


def test_fan_in_of_an_intermediate_makes_one_job(tmp_path):
    """Warps read the calexps of every detector of a visit: all of a visit is one job."""
    repo = make_toy_repo(str(tmp_path / "repo"), n_visits=2)
    graph = build(repo, selection="#calibrate,measure,warp")
    jobs = graph.jobs()
    per_visit = {}
    for job in jobs:
        visits = {graph.quanta[q].data_id["visit"] for q in job}
        assert len(visits) == 1
        per_visit.setdefault(visits.pop(), []).append(len(job))
    warps = {v: sum(q.label == "warp" and q.data_id["visit"] == v for q in graph.quanta.values())
             for v in (1, 2)}  # fmt: skip
    assert {v: n for v, (n,) in per_visit.items()} == {v: 8 + warps[v] for v in (1, 2)}
    summary = run_graph(repo, graph, jobs=2)
    assert summary.ok, summary.describe()
    assert not repo.query_datasets("calexp", collections="out")
    for ref in repo.query_datasets("warp", collections="out"):
        assert np.all(repo.get(ref) == 200.0 * ref.data_id["visit"])


def test_failure_inside_a_chain_commits_the_rest(tmp_path):
    repo = make_toy_repo(str(tmp_path / "repo"), n_visits=3)
    summary = run_graph(repo, build(repo, fail_visits=[2]), jobs=2)
    assert summary.totals == {"done": 16, "skipped": 0, "failed": 4, "blocked": 4}
    assert {str(q) for q in summary.blocked} == {
        f"measure {{'instrument': 'TestCam', 'visit': 2, 'detector': {d}}}" for d in range(4)
    }
    assert sorted(src_fluxes(repo)) == [(v, d) for v in (1, 3) for d in range(4)]
    failed = repo.registry.current_quanta().filter(pl.col("status") == "failed")
    assert len(failed) == 4 and all("visit 2 is cursed" in e for e in failed["error"])
    again = build(repo, fail_visits=[])
    assert sum(q.status == "run" for q in again.quanta.values()) == 8
    assert run_graph(repo, again, jobs=1).totals["done"] == 8


def test_provenance_goes_through_an_intermediate_that_was_never_written(tmp_path):
    repo = make_toy_repo(str(tmp_path / "repo"), n_visits=1)
    graph = build(repo)
    run_graph(repo, graph, jobs=1)
    src = repo.find_dataset("src", instrument="TestCam", visit=1, detector=2, collections="out")
    prov = trace_provenance(repo, [src])
    calibrate = next(
        q for q in graph.quanta.values() if q.label == "calibrate" and q.data_id["detector"] == 2
    )
    calexp_id = calibrate.outputs["calexp"].id
    node = prov.datasets[calexp_id]
    assert not node.found and node.in_memory
    assert node.dataset_type == "calexp" and node.data_id["detector"] == 2
    assert node.quantum_id == calibrate.id
    raws = {r.dataset_type for r in prov.raws()}
    assert raws == {"rawImage", "bias"}
    text = prov.to_text()
    assert (
        "calexp instrument=TestCam visit=1 detector=2 in out (not written: handed over in memory)"
        in text
    )
    assert "no longer in the repository" not in text


def _children(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return {int(p) for p in f.read().split()}
    except FileNotFoundError:
        return set()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_the_driver_mid_chain_then_rerun(tmp_path):
    """kill -9 of `drp run` alone (not its process group): its workers exit, nothing is half
    written, and the same command completes exactly what is missing; verify is clean."""
    repo = make_toy_repo(str(tmp_path / "repo"), n_visits=4)
    path = tmp_path / "toy.yaml"
    path.write_text(CHAIN)
    command = [sys.executable, "-m", "cli.main", "run", repo.storage.url, f"{path}#singleFrame",
               "-i", "raw,calib", "--output", "out", "-j", "2",
               "--config", "calibrate.sleep=0.3"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, TESTS_DIR])}
    quanta_dir = os.path.join(repo.storage.root, "registry", "quanta")
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    workers: set[int] = set()
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        workers |= _children(proc.pid)
        done = os.listdir(quanta_dir) if os.path.isdir(quanta_dir) else []
        if len([n for n in done if is_log_file(n)]) >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # the pool's workers (and multiprocessing's resource tracker) notice and exit
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert workers and not any(_alive(p) for p in workers)
    crashed = Repository(repo.storage.url)
    present = {r.data_id["visit"] * 10 + r.data_id["detector"]
               for r in crashed.query_datasets("src", collections="out")}  # fmt: skip
    assert 0 < len(present) < 16
    assert not crashed.query_datasets("calexp", collections="out")
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    missing = 16 - len(present)
    assert f"{2 * missing} done, {2 * len(present)} skipped, 0 failed, 0 blocked" in rerun.stdout
    final = Repository(repo.storage.url)
    refs = final.query_datasets("src", collections="out")
    assert len(refs) == 16
    puts = log_rows(final).filter(pl.col("op") == "put")
    assert puts.group_by("dataset_id").len()["len"].max() == 1  # each src committed once
    assert final.verify().ok
    verify = subprocess.run([sys.executable, "-m", "cli.main", "verify", repo.storage.url],
                            env=env, capture_output=True, text=True)  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _pipeline(stages: str, **config) -> Pipeline:
    """The toy stages named (label: class), with calexp handed over in memory."""
    lines = ["stages:"]
    for label in stages.split():
        name = {"swarp": "SummarizedWarp", "visitSummary": "VisitSummary"}.get(
            label, label.capitalize()
        )
        lines.append(f"  {label}: stages_toys.{name}" if label != "calibrate" else "  calibrate:")
        if label == "calibrate":
            lines.append("    class: stages_toys.Calibrate")
            if config:
                lines.append("    config:")
                lines.extend(f"      {k}: {v!r}" for k, v in config.items())
    lines.append("intermediates: [calexp]")
    return Pipeline.from_yaml("\n".join(lines) + "\n")


def _graph(repo, pipeline, **kwargs):
    return build_graph(repo, pipeline, output_run="out", inputs=["raw", "calib"], **kwargs)


def test_a_failure_in_a_fan_in_job_counts_every_quantum_once(tmp_path):
    repo = make_toy_repo(str(tmp_path / "repo"), n_visits=2)
    graph = _graph(repo, _pipeline("calibrate measure echo warp", fail_detectors=[0]))
    summary = run_graph(repo, graph, jobs=1)
    totals = summary.totals
    assert totals["done"] + totals["failed"] + totals["blocked"] == len(graph.quanta)
    assert totals["failed"] == 2  # detector 0 of each visit
    # the other detectors' sources and echoes were made and are counted done, not blocked
    echoes = repo.query_datasets("srcEcho", collections="out")
    assert sorted(r.data_id["detector"] for r in echoes) == [1, 1, 2, 2, 3, 3]
    assert summary.counts["echo"] == {"done": 6, "skipped": 0, "failed": 0, "blocked": 2}
    assert all(q.label in ("measure", "echo", "warp") for q in summary.blocked)


def test_jobs_that_depend_on_each_other_are_merged(tmp_path):
    """Warps read in-memory calexps and the visit summary made from the same visit's sources:
    two groups that need each other, run as one job rather than waiting for ever."""
    repo = make_toy_repo(str(tmp_path / "repo"), n_visits=2)
    graph = _graph(repo, _pipeline("calibrate measure visitSummary swarp"))
    jobs = graph.jobs()
    assert len(jobs) == 2  # one per visit
    for job in jobs:
        position = {q: i for i, q in enumerate(job)}
        for q in job:  # in dependency order
            assert all(position[u] < position[q] for u in graph.quanta[q].upstream if u in position)
    summary = run_graph(repo, graph, jobs=2)
    assert summary.ok and summary.totals["done"] == len(graph.quanta), summary.describe()
    assert repo.query_datasets("warp", collections="out")


def test_regenerating_an_in_memory_input_changes_nothing_downstream(tmp_path):
    repo = make_toy_repo(str(tmp_path / "repo"), n_visits=2)
    pipeline = _pipeline("calibrate measure warp")
    run_graph(repo, _graph(repo, pipeline), jobs=1)
    victim = repo.find_dataset("src", instrument="TestCam", visit=2, detector=1, collections="out")
    repo.remove_datasets([victim])
    again = _graph(repo, pipeline)
    to_run = sorted(str(q) for q in again.quanta.values() if q.status == "run")
    # measure makes src again; calibrate runs only to hand it its calexp: the warps, which
    # read the same calexp, get the same one and are left alone
    assert to_run == [
        "calibrate {'instrument': 'TestCam', 'visit': 2, 'detector': 1}",
        "measure {'instrument': 'TestCam', 'visit': 2, 'detector': 1}",
    ]
    assert run_graph(repo, again, jobs=1).totals["done"] == 2


def test_a_kept_intermediate_is_written_again_when_its_producer_reruns(tmp_path):
    repo = make_toy_repo(str(tmp_path / "repo"), n_visits=1)
    assert run_graph(repo, build(repo, keep=True), jobs=1).ok
    redo = build(repo, gain=3.0, clobber=True)  # in memory by default, but it exists: written
    assert not any(q.transient for q in redo.quanta.values())
    assert run_graph(repo, redo, jobs=1).ok
    calexp = repo.get("calexp", instrument="TestCam", visit=1, detector=2, collections="out")
    assert np.array_equal(calexp, np.full((8, 8), 300.0))
    assert {q.status for q in build(repo, gain=3.0).quanta.values()} == {"skip"}


def test_provenance_tells_a_removed_dataset_from_an_unwritten_one(tmp_path):
    repo = make_toy_repo(str(tmp_path / "repo"), n_visits=1)
    run_graph(repo, _graph(repo, _pipeline("calibrate measure visitSummary")), jobs=1)
    src = repo.find_dataset("src", instrument="TestCam", visit=1, detector=0, collections="out")
    repo.remove_datasets([src])
    summary = repo.find_dataset("visitSummary", instrument="TestCam", visit=1, collections="out")
    prov = trace_provenance(repo, [summary])
    assert not prov.datasets[src.id].found and not prov.datasets[src.id].in_memory
    assert "no longer in the repository" in prov.to_text()
    calexps = [n for n in prov.datasets.values() if n.in_memory]
    assert sorted(n.data_id["detector"] for n in calexps) == [1, 2, 3]
