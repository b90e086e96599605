"""drp's repository beside Rubin's butler (lsst-daf-butler) on one workload, in one sitting.

Run by hand (needs ``pip install lsst-daf-butler``); prints figures, asserts nothing::

    python benchmarks/bench_vs_butler.py                  # 2000 single puts, 10000 in tens
    python benchmarks/bench_vs_butler.py --n1 500 --n10 2000

Workload: one writer puts small catalogs (20 rows, 4 columns; butler storage class
``ArrowAstropy``) keyed by (instrument, visit, detector) into a run on local disk, first one put
per transaction, then ten. Then a fresh process-like reader (a new Repository / Butler) lists
every dataset of the run (cold query-all), and for drp again after ``compact``. The butler uses
its default SQLite registry and file datastore.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from repo.repository import Repository  # noqa: E402
from tests.conftest import make_survey_records, small_catalog  # noqa: E402

N_DETECTORS = 100


def keys(n: int) -> list[tuple[int, int]]:
    return [(1 + i // N_DETECTORS, i % N_DETECTORS) for i in range(n)]


def drp_run(root: str, n: int, batch: int) -> dict[str, float]:
    repo = Repository.create(root)
    make_survey_records(repo, n_visits=n // N_DETECTORS + 1, n_detectors=N_DETECTORS)
    repo.register_dataset_type("cat", ["visit", "detector"], "Catalog")
    table = small_catalog(0, n=20)
    todo = keys(n)
    start = time.perf_counter()
    for i in range(0, n, batch):
        with repo.transaction():
            for visit, detector in todo[i : i + batch]:
                repo.put(
                    table, "cat", instrument="TestCam", visit=visit, detector=detector, run="bench"
                )
    rate = n / (time.perf_counter() - start)
    start = time.perf_counter()
    found = len(Repository(root).query_datasets("cat", collections="bench"))
    cold = time.perf_counter() - start
    Repository(root).compact()
    start = time.perf_counter()
    Repository(root).query_datasets("cat", collections="bench")
    compacted = time.perf_counter() - start
    assert found == n, (found, n)
    return {"puts_per_s": rate, "cold_ms": 1e3 * cold, "compacted_ms": 1e3 * compacted}


def butler_run(root: str, n: int, batch: int) -> dict[str, float]:
    from lsst.daf.butler import Butler, DatasetType

    Butler.makeRepo(root)
    butler = Butler.from_config(root, writeable=True, run="bench")
    registry = butler.registry
    registry.insertDimensionData(
        "instrument",
        {
            "name": "TestCam",
            "detector_max": 1000,
            "visit_max": 10**7,
            "exposure_max": 10**7,
            "class_name": "bench.TestCam",
        },
    )
    registry.insertDimensionData(
        "physical_filter", {"instrument": "TestCam", "name": "TestCam-r", "band": "r"}
    )
    registry.insertDimensionData("day_obs", {"instrument": "TestCam", "id": 20250101})
    registry.insertDimensionData(
        "detector",
        *[{"instrument": "TestCam", "id": d, "full_name": str(d)} for d in range(N_DETECTORS)],
    )
    visits = n // N_DETECTORS + 1
    registry.insertDimensionData(
        "visit",
        *[
            {
                "instrument": "TestCam",
                "id": v,
                "name": str(v),
                "physical_filter": "TestCam-r",
                "day_obs": 20250101,
            }
            for v in range(1, visits + 1)
        ],
    )
    dataset_type = DatasetType(
        "cat", ("instrument", "visit", "detector"), "ArrowAstropy", universe=butler.dimensions
    )
    registry.registerDatasetType(dataset_type)
    table = small_catalog(0, n=20)
    todo = keys(n)
    start = time.perf_counter()
    for i in range(0, n, batch):
        with butler.transaction():
            for visit, detector in todo[i : i + batch]:
                butler.put(table, "cat", instrument="TestCam", visit=visit, detector=detector)
    rate = n / (time.perf_counter() - start)
    start = time.perf_counter()
    found = len(list(Butler.from_config(root).registry.queryDatasets("cat", collections="bench")))
    cold = time.perf_counter() - start
    assert found == n, (found, n)
    return {"puts_per_s": rate, "cold_ms": 1e3 * cold, "compacted_ms": float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n1", type=int, default=2000, help="puts, one per transaction")
    parser.add_argument("--n10", type=int, default=10000, help="puts, ten per transaction")
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="bench-butler-")
    try:
        print(f"{'workload':<34}{'system':<8}{'puts/s':>9}{'cold query-all':>16}{'compacted':>11}")
        for n, batch in ((args.n1, 1), (args.n10, 10)):
            rows = {}
            for name, fn in (("drp", drp_run), ("butler", butler_run)):
                rows[name] = fn(os.path.join(scratch, f"{name}-{batch}"), n, batch)
                r = rows[name]
                print(
                    f"{f'{n} puts, {batch} per transaction':<34}{name:<8}"
                    f"{r['puts_per_s']:>9.0f}{r['cold_ms']:>13.0f} ms{r['compacted_ms']:>8.0f} ms"
                )
            ratio = rows["drp"]["puts_per_s"] / rows["butler"]["puts_per_s"]
            print(f"{'':<34}drp puts {ratio:.1f}x the butler's")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
