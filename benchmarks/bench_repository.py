"""Benchmark the data lake: puts per second with 1, 2 and 4 writer processes, and query speed.

Run by hand; prints figures, asserts nothing::

    python benchmarks/bench_repository.py                 # local disk and S3 (moto), 10,000 puts
    python benchmarks/bench_repository.py --n 2000 --skip-s3

Workload: small catalogs (20 rows, 4 columns) keyed by (visit, detector). Each writer process
commits its puts in transactions of ``--batch`` datasets, the outputs of one unit of work (one
quantum); ``--batch 1`` commits every put on its own. Then: query all datasets, a constrained query,
get 100 datasets; and a constrained query over 100,000 registry records (90,000 of them added as
records only, to size the registry without writing 90,000 more files).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from repo.registry import dataset_id_for  # noqa: E402
from repo.repository import Repository  # noqa: E402
from tests.conftest import make_survey_records, small_catalog  # noqa: E402

N_DETECTORS = 100


def _writer(url: str, keys: list[tuple[int, int]], batch: int, queue: mp.Queue) -> None:
    repo = Repository(url)
    table = small_catalog(0, n=20)
    start = time.perf_counter()
    for i in range(0, len(keys), batch):
        with repo.transaction():
            for visit, detector in keys[i : i + batch]:
                repo.put(
                    table, "cat", instrument="TestCam", visit=visit, detector=detector, run="bench"
                )
    queue.put(time.perf_counter() - start)


def bench_puts(url: str, n: int, writers: int, batch: int) -> float:
    """Put n catalogs with ``writers`` processes; returns puts per second (wall clock)."""
    repo = Repository.create(url)
    make_survey_records(repo, n_visits=n // N_DETECTORS + 1, n_detectors=N_DETECTORS)
    repo.register_dataset_type("cat", ["visit", "detector"], "Catalog")
    keys = [(1 + i // N_DETECTORS, i % N_DETECTORS) for i in range(n)]
    shares = [keys[w::writers] for w in range(writers)]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(url, share, batch, queue)) for share in shares]
    start = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - start
    worker_times = [queue.get() for _ in procs]
    count = len(Repository(url).query_datasets("cat"))
    assert count == n, f"expected {n} datasets, found {count}"
    # wall clock includes process start-up (~1 s); report the writers' own time too
    rate = n / max(worker_times)
    print(
        f"    {writers} writer(s), batch {batch:>3}: {n} puts in {elapsed:6.2f} s wall "
        f"({n / elapsed:7.0f}/s incl. start-up, {rate:7.0f}/s writing)"
    )
    return rate


def _timed(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_queries(url: str, n: int) -> None:
    repo = Repository(url)
    where = "visit IN (10..20) AND detector < 5 AND band = 'r'"
    cold = Repository(url)
    start = time.perf_counter()
    every = cold.query_datasets("cat")
    print(
        f"    query all ({len(every)} datasets), cold: {1e3 * (time.perf_counter() - start):.0f} ms"
    )
    t_all = _timed(lambda: repo.query_datasets("cat"))
    print(f"    query all, warm: {1e3 * t_all:.1f} ms")
    hits = len(repo.query_datasets("cat", where=where))
    t_where = _timed(lambda: repo.query_datasets("cat", where=where), repeat=20)
    print(f"    constrained query ({hits} hits), warm: {1e3 * t_where:.1f} ms")
    refs = random.Random(1).sample(every, 100)
    start = time.perf_counter()
    for ref in refs:
        repo.get(ref)
    print(f"    get 100 by ref: {1e3 * (time.perf_counter() - start):.0f} ms")
    start = time.perf_counter()
    for ref in refs[:20]:
        repo.get("cat", dict(ref.data_id), collections="bench")
    print(f"    get 20 by dataId: {1e3 * (time.perf_counter() - start) / 20:.1f} ms each")


def bench_large_registry(url: str, n_records: int = 100_000) -> None:
    """Constrained query over n_records registry rows (files not written for the synthetic ones)."""
    repo = Repository.create(url)
    make_survey_records(repo, n_visits=n_records // N_DETECTORS, n_detectors=N_DETECTORS)
    dataset_type = repo.register_dataset_type("cat", ["visit", "detector"], "Catalog")
    visits = {v["id"]: v for v in repo.query_dimension_records("visit")}
    rows = []
    now = time.time_ns()
    for i in range(n_records):
        visit, detector = 1 + i // N_DETECTORS, i % N_DETECTORS
        rec = visits[visit]
        data_id = repo.registry.expand_data_id(
            {"instrument": "TestCam", "visit": visit, "detector": detector}, dataset_type.group
        )
        rows.append(
            {
                **{
                    k: data_id.get(k)
                    for k in (
                        "instrument",
                        "band",
                        "physical_filter",
                        "day_obs",
                        "visit",
                        "detector",
                    )
                },
                "op": "put",
                "dataset_type": "cat",
                "run": "big",
                "dataset_id": dataset_id_for("cat", "big", data_id, dataset_type.group.required),
                "path": repo.path_for(dataset_type, data_id, "big"),
                "size": 1,
                "checksum": "",
                "timestamp": now,
                "producer": "bench",
                "input_ids": [],
                "software": "{}",
                "skymap": None,
                "tract": None,
                "patch": None,
                "quantum_id": None,
                "config_hash": None,
            }
        )
        assert rec["band"] == data_id["band"]
    repo.registry.register_run("big")
    for i in range(0, n_records, 10_000):
        repo.registry.commit_datasets(rows[i : i + 10_000])
    repo.compact()
    fresh = Repository(url)
    where = "visit IN (100..120) AND detector < 5 AND band = 'r'"
    start = time.perf_counter()
    hits = fresh.query_datasets("cat", where=where)
    cold = time.perf_counter() - start
    warm = _timed(lambda: fresh.query_datasets("cat", where=where), repeat=20)
    print(
        f"    {n_records} records: constrained query ({len(hits)} hits) "
        f"cold {1e3 * cold:.0f} ms, warm {1e3 * warm:.1f} ms"
    )


def start_moto() -> tuple[object, str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
    )
    return server, endpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="puts on local disk")
    parser.add_argument("--s3-n", type=int, default=2_000, help="puts on S3 (moto)")
    parser.add_argument("--batch", type=int, default=10, help="puts per transaction")
    parser.add_argument("--skip-s3", action="store_true")
    parser.add_argument(
        "--records", type=int, default=100_000, help="registry size of the constrained query"
    )
    parser.add_argument(
        "--registry-only", action="store_true", help="only the large-registry query"
    )
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="drp-bench-", dir=os.environ.get("BENCH_DIR"))
    try:
        print(f"local disk ({tmp})")
        if args.registry_only:
            bench_large_registry(f"{tmp}/big", args.records)
            return
        for writers in (1, 2, 4):
            bench_puts(f"{tmp}/w{writers}", args.n, writers, args.batch)
        bench_puts(f"{tmp}/single", min(args.n, 2000), 1, 1)
        bench_queries(f"{tmp}/w1", args.n)
        bench_large_registry(f"{tmp}/big", args.records)
        if not args.skip_s3:
            server, endpoint = start_moto()
            import boto3

            print(f"S3 (moto server at {endpoint}; moto itself is single-threaded Python)")
            for writers in (1, 2, 4):
                bucket = f"bench-{uuid.uuid4().hex[:8]}"
                boto3.client("s3").create_bucket(Bucket=bucket)
                bench_puts(f"s3://{bucket}/repo", args.s3_n, writers, args.batch)
            bench_queries(f"s3://{bucket}/repo", args.s3_n)
            server.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
