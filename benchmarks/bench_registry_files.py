"""Benchmark the registry's file count and cold reads after many pipeline jobs.

Run by hand; prints figures, asserts nothing::

    python benchmarks/bench_registry_files.py 1 250    # merging on, 250 visits (2000 quanta)
    python benchmarks/bench_registry_files.py 0 250    # merging off, for comparison

The toy pipeline (calibrate, measure; tests/stages_toys.py) runs serially, one commit per job;
then a fresh process-like reader queries every dataset (cold), and again after ``compact``.
"""

import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [HERE, os.path.join(HERE, "tests")]

from stages_toys import make_toy_repo, toy_pipeline_yaml  # noqa: E402

import repo.logtable as lt  # noqa: E402
from repo.repository import Repository  # noqa: E402
from stages.framework.executors import run_graph  # noqa: E402
from stages.framework.graph import build_graph  # noqa: E402
from stages.framework.pipeline import Pipeline  # noqa: E402


def main(merge: bool, visits: int) -> None:
    if not merge:
        lt.MERGE_TIERS = ((1, 10**9),)  # no size class ever holds too many files
    scratch = tempfile.mkdtemp(prefix="bench-registry-")
    url = os.path.join(scratch, "repo")
    repo = make_toy_repo(url, n_visits=visits)
    pipeline = Pipeline.from_yaml(toy_pipeline_yaml()).subset("singleFrame")
    graph = build_graph(repo, pipeline, output_run="out", inputs=["raw", "calib"])
    start = time.perf_counter()
    run_graph(repo, graph, jobs=1)
    run_seconds = time.perf_counter() - start
    files = {t: len(os.listdir(os.path.join(url, "registry", t))) for t in ("datasets", "quanta")}
    start = time.perf_counter()
    n = len(Repository(url).query_datasets(collections="out"))
    cold = time.perf_counter() - start
    Repository(url).compact()
    start = time.perf_counter()
    Repository(url).query_datasets(collections="out")
    compacted = time.perf_counter() - start
    print(
        f"merge={merge}: {len(graph.quanta)} quanta in {run_seconds:.1f} s, files {files}, "
        f"cold query-all {1e3 * cold:.0f} ms ({n} datasets), compacted {1e3 * compacted:.0f} ms"
    )
    shutil.rmtree(scratch)


if __name__ == "__main__":
    main(sys.argv[1] == "1", int(sys.argv[2]))
