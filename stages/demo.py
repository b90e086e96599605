"""The embedded default: simulate a small survey into a repository (``drp demo``).

:func:`simulate_survey` writes everything the pipeline and the scoring need:

* the camera (``instrument``, ``physical_filter``, ``detector`` records, and its configuration as
  the ``camera`` dataset, since a resized SimCam differs from the default one);
* the survey's ``day_obs``, ``visit`` (science and calibration exposures) and
  ``visit_detector_region`` records;
* one ``raw`` (multi-extension FITS, as a camera writes it) per exposure and detector, in run
  ``SimCam/raw``;
* the Gaia-like reference catalog ``refcat`` in ``SimCam/refcats``;
* the truth, in ``SimCam/truth``: per visit and detector the ``truth`` source table and the
  ``truthMask`` planes, plus the sky's source lists and the visits' conditions;
* the chained collection ``SimCam/defaults`` = raw, refcats, truth.

Each (exposure, detector) is simulated, written and committed as one unit; a unit whose ``raw``
exists already is skipped, so running the demo again resumes where it stopped. The survey's
configuration is stored in the repository, and a different one is refused for the same repository.
Units run in parallel on a pool of processes.

:func:`process_survey` then runs the default pipeline (``drp``: single-frame processing, warps
and co-adds on the default sky map, which :func:`setup_repository` registers) from
``SimCam/defaults`` into the run ``SimCam/runs/demo`` on a pool of processes; finished quanta
are skipped, so it resumes too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

from repo.errors import DrpError
from repo.registry import Provenance
from repo.repository import Repository
from repo.skymap import SkyMapConfig
from stages.simulate.truth import masks_to_hdulist

from .calibrate.refcat import REFCAT_SHARD_DIMENSION, put_refcat_shards
from .framework.executors import prepare_worker_process
from .framework.skymap_setup import register_skymap
from .simulate import SurveyConfig, make_plan, make_sky, simulate_calibration_frames, simulate_raw

log = logging.getLogger(__name__)

INSTRUMENT = "SimCam"
RAW_RUN = "SimCam/raw"
TRUTH_RUN = "SimCam/truth"
REFCAT_RUN = "SimCam/refcats"
DEFAULTS = "SimCam/defaults"
DEMO_RUN = "SimCam/runs/demo"
#: The pipeline (and subset) the demo runs.
DEMO_PIPELINE = "drp"

#: Dataset types the simulation writes: name -> (dimensions, storage class).
DATASET_TYPES: dict[str, tuple[tuple[str, ...], str]] = {
    "raw": (("instrument", "visit", "detector"), "Fits"),
    "truth": (("instrument", "visit", "detector"), "Catalog"),
    "truthMask": (("instrument", "visit", "detector"), "Fits"),
    "camera": (("instrument",), "StructuredData"),
    "surveyConfig": ((), "StructuredData"),
    "refcat": ((REFCAT_SHARD_DIMENSION,), "Catalog"),
    "truthStars": ((), "Catalog"),
    "truthGalaxies": ((), "Catalog"),
    "truthTransients": ((), "Catalog"),
    "truthAsteroids": ((), "Catalog"),
    "truthVisitConditions": ((), "Catalog"),
}


@dataclass
class SimulationSummary:
    """What :func:`simulate_survey` did."""

    units: int
    simulated: int
    skipped: int
    megapixels: float
    seconds: float

    @property
    def mpix_per_second(self) -> float:
        return self.megapixels / self.seconds if self.seconds > 0 else float("nan")


def survey_config_dict(config: SurveyConfig) -> dict[str, Any]:
    """The survey configuration as JSON-compatible values."""
    values = dataclasses.asdict(config)
    values["bands"] = list(values["bands"])
    return values


def _check_or_store_config(repo: Repository, config: SurveyConfig) -> None:
    """Store the survey configuration, or refuse a different one for this repository."""
    wanted = survey_config_dict(config)
    try:
        stored = repo.get("surveyConfig", {}, collections=TRUTH_RUN)
    except DrpError:
        repo.put(wanted, "surveyConfig", {}, run=TRUTH_RUN)
        return
    if stored != wanted:
        diff = {k: (stored.get(k), v) for k, v in wanted.items() if stored.get(k) != v}
        raise DrpError(
            f"{repo.storage.url} already holds a simulated survey with another configuration "
            f"(stored, requested): {diff}; use a new repository"
        )


def setup_repository(repo: Repository, config: SurveyConfig) -> list[tuple[int, int, str]]:
    """Register the camera, records, dataset types and survey-level datasets.

    Returns the units of work: (exposure id, detector id, kind) for every raw to simulate.
    """
    for name, (dimensions, storage_class) in DATASET_TYPES.items():
        repo.register_dataset_type(name, dimensions, storage_class)
    _check_or_store_config(repo, config)
    plan = make_plan(config)
    camera = plan.camera
    repo.register_instrument(camera)
    repo.insert_dimension_records("day_obs", plan.day_obs_records())
    repo.insert_dimension_records("visit", plan.visit_records() + plan.calibration_records())
    regions = [
        {
            "instrument": INSTRUMENT,
            "visit": v.id,
            "detector": det.id,
            "region": json.dumps(camera.detector_region(det.id, v.ra, v.dec, v.rotation_angle)),
        }
        for v in plan.visits
        for det in camera.detectors
    ]
    repo.insert_dimension_records("visit_detector_region", regions)
    register_skymap(repo, SkyMapConfig())  # the tracts and patches the visits overlap
    sky = make_sky(config, plan)
    with repo.transaction():
        repo.put(
            {"config": json.loads(camera.config_json())},
            "camera",
            instrument=INSTRUMENT,
            run=TRUTH_RUN,
            mode="skip",
        )
        put_refcat_shards(repo, sky.refcat, "refcat", REFCAT_RUN, mode="skip")
        for name, table in (
            ("truthStars", sky.stars),
            ("truthGalaxies", sky.galaxies),
            ("truthTransients", sky.transients),
            ("truthAsteroids", sky.asteroids),
            ("truthVisitConditions", plan.conditions_table()),
        ):
            repo.put(table, name, {}, run=TRUTH_RUN, mode="skip")
    for run in (RAW_RUN, TRUTH_RUN, REFCAT_RUN):
        repo.registry.register_run(run)
    repo.registry.define_chain(DEFAULTS, [RAW_RUN, REFCAT_RUN, TRUTH_RUN])
    units = [(v.id, det.id, "science") for v in plan.visits for det in camera.detectors]
    units += [(c.id, det.id, c.kind) for c in plan.calibrations for det in camera.detectors]
    return units


# -- worker side ------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(url: str, storage_options: dict[str, Any], config: SurveyConfig) -> None:
    plan = make_plan(config)
    _WORKER.update(repo=Repository(url, storage_options), plan=plan, sky=make_sky(config, plan))


def _init_pool_worker(parent_pid: int, *args: Any) -> None:
    prepare_worker_process(parent_pid)
    _init_worker(*args)


def _simulate_unit(exposure: int, detector: int, kind: str) -> tuple[bool, float]:
    """Simulate and store one raw (with its truth); returns (simulated?, megapixels)."""
    repo: Repository = _WORKER["repo"]
    plan = _WORKER["plan"]
    data_id = {"instrument": INSTRUMENT, "visit": exposure, "detector": detector}
    ref = repo.make_ref("raw", data_id, RAW_RUN)
    if repo.storage.exists(ref.path) and _recorded(repo, ref.id):
        return False, 0.0
    provenance = Provenance(producer="simulate", quantum_id=f"simulate:{exposure}:{detector}")
    with repo.transaction():
        if kind == "science":
            hdul, truth, masks = simulate_raw(plan, _WORKER["sky"], exposure, detector)
            repo.put(
                truth, "truth", data_id, run=TRUTH_RUN, mode="overwrite", provenance=provenance
            )
            repo.put(
                masks_to_hdulist(masks),
                "truthMask",
                data_id,
                run=TRUTH_RUN,
                mode="overwrite",
                provenance=provenance,
            )
        else:
            cal = next(c for c in plan.calibrations if c.id == exposure)
            hdul = simulate_calibration_frames(
                plan, cal.kind, detector, band=cal.band, index=cal.index
            )
        repo.put(hdul, "raw", data_id, run=RAW_RUN, mode="overwrite", provenance=provenance)
    pixels = sum(h.data.size for h in hdul if getattr(h, "data", None) is not None)
    return True, pixels / 1e6


def _recorded(repo: Repository, dataset_id: str) -> bool:
    import polars as pl

    current = repo.registry.current_datasets(refresh=False)
    if current.filter(pl.col("dataset_id") == dataset_id).is_empty():
        current = repo.registry.current_datasets(refresh=True)
    return not current.filter(pl.col("dataset_id") == dataset_id).is_empty()


def _progress(done: Iterator[Any], total: int, desc: str) -> Iterator[Any]:
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(done, total=total, desc=desc, unit="raw")
        return
    step = max(1, total // 10)
    for i, item in enumerate(done, 1):
        if i % step == 0 or i == total:
            print(f"{desc}: {i}/{total}", file=sys.stderr, flush=True)
        yield item


def simulate_survey(repo: Repository, config: SurveyConfig, *, jobs: int = 0) -> SimulationSummary:
    """Simulate the survey into ``repo`` (resuming: existing raws are skipped).

    Parameters
    ----------
    repo
        The repository (local or S3).
    config
        The survey.
    jobs
        Worker processes (0: one per core).
    """
    start = time.perf_counter()
    units = setup_repository(repo, config)
    jobs = jobs or os.cpu_count() or 1
    simulated = skipped = 0
    megapixels = 0.0
    args = (repo.storage.url, repo.storage.storage_options, config)
    if jobs == 1:
        _init_worker(*args)
        results = (_simulate_unit(*unit) for unit in units)
        for ok, mpix in _progress(results, len(units), "simulate"):
            simulated, skipped, megapixels = simulated + ok, skipped + (not ok), megapixels + mpix
    else:
        # spawn: a forked child would inherit fsspec/s3fs threads in an unusable state
        with ProcessPoolExecutor(
            jobs,
            mp_context=get_context("spawn"),
            initializer=_init_pool_worker,
            initargs=(os.getpid(), *args),
        ) as pool:
            futures = [pool.submit(_simulate_unit, *unit) for unit in units]
            for future in _progress(as_completed(futures), len(units), "simulate"):
                ok, mpix = future.result()
                simulated, skipped, megapixels = (
                    simulated + ok,
                    skipped + (not ok),
                    megapixels + mpix,
                )
    return SimulationSummary(
        len(units), simulated, skipped, megapixels, time.perf_counter() - start
    )


def process_survey(
    repo: Repository,
    *,
    jobs: int = 0,
    progress: Any = None,
    output_run: str = DEMO_RUN,
    keep_intermediates: bool = False,
) -> Any:
    """Run the default pipeline (single frame, warps, co-adds) on the simulated survey.

    Parameters
    ----------
    repo
        A repository holding a simulated survey (:func:`simulate_survey`).
    jobs
        Worker processes (0: one per core; 1: serially in this process).
    progress
        A :class:`stages.framework.progress.Progress` (default: bars on a terminal, log lines otherwise).
    output_run
        The run written.
    keep_intermediates
        Write the intermediate images (postISRCCD, icExp) too.

    Returns
    -------
    stages.framework.executors.RunSummary
        What ran, was skipped or failed.
    """
    from stages.framework.executors import run_graph
    from stages.framework.graph import build_graph
    from stages.framework.pipeline import Pipeline
    from stages.framework.progress import make_progress

    graph = build_graph(
        repo,
        Pipeline.load(DEMO_PIPELINE),
        output_run=output_run,
        inputs=[DEFAULTS],
        keep_intermediates=keep_intermediates,
    )
    return run_graph(
        repo, graph, jobs=jobs or os.cpu_count() or 1, progress=progress or make_progress()
    )
