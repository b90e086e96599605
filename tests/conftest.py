"""Shared fixtures: a real S3 server (moto) on 127.0.0.1 and repositories on disk and on S3.

Storage tests take the ``repo_url`` fixture, which is parametrized over local disk and S3, so that
every one of them runs against both. The AWS environment variables point at the moto server for the
whole session, so subprocesses (concurrent writers, ``drp`` itself) reach it too.
"""

from __future__ import annotations

import logging
import os
import uuid

import numpy as np
import pytest


@pytest.fixture(scope="session")
def s3_endpoint():
    """Start moto's S3 server on a free port of 127.0.0.1 and point AWS_* at it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in _AWS_VARS}
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
    )
    os.environ.pop("AWS_PROFILE", None)
    yield endpoint
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


_AWS_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_PROFILE",
)


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A new, empty bucket; returns its name."""
    import boto3

    name = f"drp-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def repo_url(request, tmp_path):
    """A URL for a repository that does not exist yet, on local disk and on S3."""
    if request.param == "local":
        return str(tmp_path / "repo")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/repo"


def make_survey_records(repo, *, n_visits=20, n_detectors=4, bands=("g", "r")):
    """Insert instrument, filter, detector and visit records for a small fake camera."""
    repo.insert_dimension_records("instrument", [{"name": "TestCam", "class_name": "test"}])
    repo.insert_dimension_records("band", [{"name": b} for b in bands])
    repo.insert_dimension_records(
        "physical_filter",
        [{"instrument": "TestCam", "name": f"TestCam-{b}", "band": b} for b in bands],
    )
    repo.insert_dimension_records(
        "day_obs", [{"instrument": "TestCam", "id": 20260101 + i} for i in range(3)]
    )
    repo.insert_dimension_records(
        "detector",
        [
            {"instrument": "TestCam", "id": d, "name": f"D{d}", "nx": 64, "ny": 64}
            for d in range(n_detectors)
        ],
    )
    visits = []
    for v in range(1, n_visits + 1):
        band = bands[v % len(bands)]
        visits.append(
            {
                "instrument": "TestCam",
                "id": v,
                "physical_filter": f"TestCam-{band}",
                "band": band,
                "day_obs": 20260101 + v % 3,
                "exposure_time": 10.0 + v,
                "ra": 150.0 + 0.01 * v,
                "dec": 2.0,
                "airmass": 1.0 + 0.01 * v,
            }
        )
    repo.insert_dimension_records("visit", visits)
    return visits


def small_catalog(seed: int = 0, n: int = 10):
    """An astropy table with units, descriptions and a few column types."""
    from astropy.table import Table

    rng = np.random.default_rng(seed)
    table = Table()
    table["id"] = np.arange(n, dtype=np.int64)
    table["psfFlux"] = rng.normal(1000, 10, n)
    table["psfFlux"].unit = "nJy"
    table["psfFlux"].description = "PSF flux"
    table["flag"] = rng.random(n) > 0.5
    table["name"] = [f"s{i}" for i in range(n)]
    return table
