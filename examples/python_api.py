"""Using a drp repository from Python: define, put, query, get, SQL.

Run: python examples/python_api.py [REPO]      (default: a temporary directory)
"""

from __future__ import annotations

import sys
import tempfile

import numpy as np
from astropy.table import Table

from repo.repository import Repository


def main(url: str) -> None:
    repo = Repository.create(url, exist_ok=True)

    # Dimension records say what exists: a camera, its filters and detectors, and visits.
    repo.insert_dimension_records("instrument", [{"name": "ExampleCam", "class_name": "none"}])
    repo.insert_dimension_records("band", [{"name": "g"}, {"name": "r"}])
    repo.insert_dimension_records(
        "physical_filter",
        [{"instrument": "ExampleCam", "name": f"ExampleCam-{b}", "band": b} for b in "gr"],
    )
    repo.insert_dimension_records("day_obs", [{"instrument": "ExampleCam", "id": 20260101}])
    repo.insert_dimension_records(
        "detector",
        [
            {"instrument": "ExampleCam", "id": d, "name": f"CCD{d}", "nx": 2048, "ny": 2048}
            for d in range(2)
        ],
    )
    repo.insert_dimension_records(
        "visit",
        [
            {
                "instrument": "ExampleCam",
                "id": v,
                "physical_filter": f"ExampleCam-{'gr'[v % 2]}",
                "band": "gr"[v % 2],
                "day_obs": 20260101,
                "exposure_time": 30.0 * v,
                "observation_type": "science",
            }
            for v in range(1, 5)
        ],
    )

    # A dataset type: a name, dimensions and a storage class.
    repo.register_dataset_type("src", ["visit", "detector"], "Catalog")

    # Put one catalog per (visit, detector); one transaction commits them together.
    rng = np.random.default_rng(1)
    with repo.transaction():
        for visit in range(1, 5):
            for detector in range(2):
                table = Table({"psfFlux": rng.normal(1e4, 100, 50)})
                table["psfFlux"].unit = "nJy"
                repo.put(
                    table,
                    "src",
                    instrument="ExampleCam",
                    visit=visit,
                    detector=detector,
                    run="example/run1",
                    mode="skip",
                )

    # Query with a where-expression (parsed safely; values are bound, never pasted).
    refs = repo.query_datasets(
        "src", where="band = :b AND visit.exposure_time > 30", binds={"b": "r"}
    )
    for ref in refs:
        print(ref.data_id, ref.path)

    # Get one back: the same type that was put (an astropy Table, with units).
    table = repo.get("src", instrument="ExampleCam", visit=3, detector=1)
    print(
        f"visit 3 detector 1: {len(table)} rows, mean {np.mean(table['psfFlux']):.1f} "
        f"{table['psfFlux'].unit}"
    )

    # SQL over every catalog in the lake, joined with the visit records.
    result = repo.sql(
        "SELECT src.band, visit, v.exposure_time, count(*) AS n, avg(psfFlux) AS mean_flux "
        "FROM src JOIN visit v USING (instrument, visit) GROUP BY ALL ORDER BY visit"
    )
    for row in result.to_pylist():
        print(row)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="drp-example-"))
