"""Small stages on small arrays and catalogs for the pipeline tests, and a repository to run them on.

The stages form a miniature survey pipeline whose every output is known exactly:

    rawImage --calibrate (visit, detector; bias prerequisite)--> calexp
    calexp --measure (visit, detector)--> src
    src --visitSummary (visit; multiple)--> visitSummary
    calexp --warp (tract, patch, visit; multiple, through sky regions)--> warp
    warp --coadd (tract, patch, band; multiple)--> coadd

A raw of visit v, detector d is an 8 x 8 image full of ``100 v + d``; the bias of detector d is full
of ``d``. Imported by the tests and, as ``stages_toys``, by worker processes and ``drp run``.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from repo.regions import ConvexPolygon
from repo.repository import Repository
from repo.skymap import SkyMapConfig
from stages.framework.base import Connection, Stage
from stages.framework.skymap_setup import register_skymap

VD = ("instrument", "visit", "detector")
SHAPE = (8, 8)
TOY_SKYMAP = SkyMapConfig.test("toy_rings")


@dataclass(frozen=True)
class CalibrateConfig:
    gain: float = 2.0
    fail_visits: tuple[int, ...] = ()
    fail_detectors: tuple[int, ...] = ()
    sleep: float = 0.0


class Calibrate(Stage):
    dimensions = VD
    inputs = {
        "raw": Connection("rawImage", VD, "Image"),
        "bias": Connection("bias", ("instrument", "detector"), "Image", prerequisite=True),
    }
    outputs = {"calexp": Connection("calexp", VD, "Image")}
    config_class = CalibrateConfig

    def run(self, raw, bias, data_id):
        if data_id["visit"] in self.config.fail_visits:
            raise RuntimeError(f"visit {data_id['visit']} is cursed")
        if data_id["detector"] in self.config.fail_detectors:
            raise RuntimeError(f"detector {data_id['detector']} is cursed")
        if self.config.sleep:
            time.sleep(self.config.sleep)
        return {"calexp": (raw - bias) * self.config.gain}


class Measure(Stage):
    dimensions = VD
    inputs = {"calexp": Connection("calexp", VD, "Image")}
    outputs = {"src": Connection("src", VD, "Catalog")}

    def run(self, calexp, data_id):
        table = pa.table(
            {
                "visit": [data_id["visit"]],
                "detector": [data_id["detector"]],
                "flux": [float(calexp.sum())],
            }
        )
        return {"src": table}


class VisitSummary(Stage):
    dimensions = ("instrument", "visit")
    inputs = {"src": Connection("src", VD, "Catalog", multiple=True)}
    outputs = {"summary": Connection("visitSummary", ("instrument", "visit"), "Catalog")}

    def run(self, src):
        return {"summary": pa.concat_tables([pa.table(t) for t in src.values()])}


class Warp(Stage):
    dimensions = ("instrument", "visit", "skymap", "tract", "patch")
    inputs = {"calexp": Connection("calexp", VD, "Image", multiple=True)}
    outputs = {
        "warp": Connection("warp", ("instrument", "visit", "skymap", "tract", "patch"), "Image")
    }

    def run(self, calexp, data_id, skymap):
        assert skymap.name == data_id["skymap"]
        detectors = [d["detector"] for d in calexp]
        assert detectors == sorted(detectors)
        return {"warp": np.mean([image for image in calexp.values()], axis=0)}


class Echo(Stage):
    """A second reader of src, downstream of measure only."""

    dimensions = VD
    inputs = {"src": Connection("src", VD, "Catalog")}
    outputs = {"echo": Connection("srcEcho", VD, "Catalog")}

    def run(self, src):
        return {"echo": src}


class SummarizedWarp(Warp):
    """A warp that also reads its visit's summary (as a warp needs a visit's calibrations)."""

    inputs = {
        **Warp.inputs,
        "summary": Connection("visitSummary", ("instrument", "visit"), "Catalog"),
    }

    def run(self, calexp, summary, data_id, skymap):
        assert summary.num_rows >= len(calexp)  # every detector of the visit is summarized
        return super().run(calexp, data_id, skymap)


class Coadd(Stage):
    dimensions = ("skymap", "tract", "patch", "band")
    inputs = {
        "warps": Connection(
            "warp", ("instrument", "visit", "skymap", "tract", "patch"), "Image", multiple=True
        )
    }
    outputs = {"coadd": Connection("coadd", ("skymap", "tract", "patch", "band"), "Image")}

    def run(self, warps):
        return {"coadd": np.sum([w for w in warps.values()], axis=0)}


@dataclass(frozen=True)
class BurnConfig:
    iterations: int = 200_000


class Burn(Stage):
    """CPU-bound: a pure-Python loop (holds the GIL), for executor speed-up measurements."""

    dimensions = VD
    inputs = {"raw": Connection("rawImage", VD, "Image")}
    outputs = {"burnt": Connection("burnt", VD, "Image")}
    config_class = BurnConfig

    def run(self, raw):
        total = 0.0
        for i in range(self.config.iterations):
            total += math.sin(i)
        return {"burnt": raw + total}


class Nothing(Stage):
    """Copies its input: the framework overhead alone."""

    dimensions = VD
    inputs = {"raw": Connection("rawImage", VD, "Image")}
    outputs = {"copy": Connection("rawCopy", VD, "Image")}

    def run(self, raw):
        return {"copy": raw}


def raw_value(visit: int, detector: int) -> float:
    return 100.0 * visit + detector


def detector_region(ra: float, dec: float, detector: int, size: float = 0.6) -> str:
    """A 2 x 2 mosaic of square detectors of ``size`` degrees around a boresight."""
    col, row = detector % 2, detector // 2
    scale = 1.0 / math.cos(math.radians(dec))
    x0, y0 = (col - 1) * size, (row - 1) * size
    ra_v = [ra + (x0 + dx) * scale for dx in (0.0, size, size, 0.0)]
    dec_v = [dec + y0 + dy for dy in (0.0, 0.0, size, size)]
    return ConvexPolygon.from_radec(ra_v, dec_v).to_json()


def make_toy_repo(
    url: str,
    *,
    n_visits: int = 6,
    n_detectors: int = 4,
    regions: bool = True,
    skymap: bool = True,
    raw_run: str = "raw",
    storage_options=None,
) -> Repository:
    """A repository with TestCam records, raws, biases, detector regions and the toy sky map."""
    from conftest import make_survey_records

    repo = Repository.create(url, storage_options)
    visits = make_survey_records(repo, n_visits=n_visits, n_detectors=n_detectors)
    if regions:
        repo.insert_dimension_records(
            "visit_detector_region",
            [
                {
                    "instrument": "TestCam",
                    "visit": v["id"],
                    "detector": d,
                    "region": detector_region(v["ra"] + 0.4 * v["id"], v["dec"], d),
                }
                for v in visits
                for d in range(n_detectors)
            ],
        )
    repo.register_dataset_type("rawImage", VD, "Image")
    repo.register_dataset_type("bias", ("instrument", "detector"), "Image")
    with repo.transaction():
        for v in visits:
            for d in range(n_detectors):
                value = raw_value(v["id"], d)
                repo.put(
                    np.full(SHAPE, value),
                    "rawImage",
                    instrument="TestCam",
                    visit=v["id"],
                    detector=d,
                    run=raw_run,
                )
        for d in range(n_detectors):
            repo.put(
                np.full(SHAPE, float(d)), "bias", instrument="TestCam", detector=d, run="calib"
            )
    if skymap:
        register_skymap(repo, TOY_SKYMAP)
    return repo


def toy_pipeline_yaml(intermediates: tuple[str, ...] = (), **config) -> str:
    """The YAML of the toy pipeline; keyword arguments become ``calibrate`` config entries;
    ``intermediates`` are the dataset types handed over in memory."""
    lines = [
        "description: toy survey pipeline for tests",
        "stages:",
        "  calibrate:",
        "    class: stages_toys.Calibrate",
    ]
    if config:
        lines.append("    config:")
        lines.extend(f"      {k}: {v!r}" for k, v in config.items())
    lines += [
        "  measure: stages_toys.Measure",
        "  visitSummary: stages_toys.VisitSummary",
        "  warp: stages_toys.Warp",
        "  coadd: stages_toys.Coadd",
        "subsets:",
        "  singleFrame: [calibrate, measure]",
        "  coaddition: [warp, coadd]",
    ]
    if intermediates:
        lines.append(f"intermediates: [{', '.join(intermediates)}]")
    return "\n".join(lines) + "\n"


#: The folder of the tests (and of this module), for PYTHONPATH of subprocesses.
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
