"""A repository on S3 shared by several writer processes (as on several machines).

Each writer commits its own registry files, so no entry is lost and no lock is taken; any reader
sees every writer's datasets. With no S3 at hand, the example starts moto's S3 server on 127.0.0.1
(``pip install "moto[s3]" flask flask-cors``); with ``AWS_ENDPOINT_URL`` and credentials set it uses
that endpoint instead.

Run: python examples/shared_s3_repository.py [--writers 3] [--puts 50]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import uuid

import numpy as np
from astropy.table import Table

from repo.repository import Repository


def writer(url: str, worker: int, puts: int) -> None:
    """One writer process: its own visit, one catalog per detector."""
    repo = Repository(url)
    rng = np.random.default_rng(worker)
    for detector in range(puts):
        table = Table({"flux": rng.normal(100, 1, 10)})
        repo.put(
            table,
            "cat",
            instrument="ShareCam",
            visit=worker + 1,
            detector=detector,
            run="shared/run",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--writers", type=int, default=3)
    parser.add_argument("--puts", type=int, default=50)
    parser.add_argument("--bucket", default=f"drp-example-{uuid.uuid4().hex[:8]}")
    args = parser.parse_args()

    server = None
    if "AWS_ENDPOINT_URL" not in os.environ:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        os.environ.update(
            AWS_ENDPOINT_URL=f"http://{host}:{port}",
            AWS_ACCESS_KEY_ID="example",
            AWS_SECRET_ACCESS_KEY="example",
            AWS_DEFAULT_REGION="us-east-1",
        )
    import boto3

    boto3.client("s3").create_bucket(Bucket=args.bucket)
    url = f"s3://{args.bucket}/survey"
    repo = Repository.create(url)
    repo.insert_dimension_records("instrument", [{"name": "ShareCam", "class_name": "none"}])
    repo.insert_dimension_records("band", [{"name": "r"}])
    repo.insert_dimension_records(
        "physical_filter", [{"instrument": "ShareCam", "name": "ShareCam-r", "band": "r"}]
    )
    repo.insert_dimension_records("day_obs", [{"instrument": "ShareCam", "id": 20260101}])
    repo.insert_dimension_records(
        "detector", [{"instrument": "ShareCam", "id": d, "name": f"D{d}"} for d in range(args.puts)]
    )
    repo.insert_dimension_records(
        "visit",
        [
            {
                "instrument": "ShareCam",
                "id": w + 1,
                "physical_filter": "ShareCam-r",
                "band": "r",
                "day_obs": 20260101,
            }
            for w in range(args.writers)
        ],
    )
    repo.register_dataset_type("cat", ["visit", "detector"], "Catalog")

    # spawn, not fork: a forked child would inherit s3fs's event-loop thread in a broken state
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=writer, args=(url, w, args.puts)) for w in range(args.writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0

    refs = repo.query_datasets("cat")
    print(f"{len(refs)} datasets from {args.writers} writers x {args.puts} puts in {url}")
    merged, rows = repo.compact()["datasets"]
    print(f"compacted {merged} registry files into one ({rows} records)")
    print(
        repo.sql(
            "SELECT visit, count(*) AS n, round(avg(flux), 2) AS mean FROM cat "
            "GROUP BY visit ORDER BY visit"
        ).to_pylist()
    )
    report = repo.verify()
    print(f"verify: {'OK' if report.ok else report}")
    if server is not None:
        server.stop()


if __name__ == "__main__":
    main()
