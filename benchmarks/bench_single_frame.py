"""Benchmark the whole single-visit chain (isr -> characterize -> calibrate) per detector.

Run by hand; prints figures, asserts nothing::

    drp demo /tmp/drp-demo                          # once: a default-preset demo repository
    python benchmarks/bench_single_frame.py /tmp/drp-demo
    python benchmarks/bench_single_frame.py /tmp/drp-demo --detectors 6 --profile

For each of ``--detectors`` science detectors of the demo (spread over visits and bands), in one
process and after a warm-up detector (imports, GalSim's tables): the seconds of each stage's
``run`` (compute only, inputs already in memory), and the seconds to read its inputs from the
repository and to write its outputs (FITS/Parquet, with checksums) into a scratch run that is
removed afterwards. Megapixels are those of the calibrated detector. With ``--profile`` the
compute of all detectors is profiled and the 25 most expensive functions (own time) printed;
``--profile-out FILE`` keeps the stats for ``python -m pstats FILE`` (callers, callees).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from repo.repository import Repository  # noqa: E402
from stages.calibrate.stages import CalibrateStage
from stages.characterize.stages import CharacterizeStage
from stages.demo import DEMO_RUN  # noqa: E402
from stages.isr.stages import IsrStage  # noqa: E402

SCRATCH_RUN = "bench/single_frame"
INPUTS = [DEMO_RUN, "SimCam/defaults"]


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def run_detector(repo: Repository, data_id: dict, profiler: cProfile.Profile | None) -> dict:
    """Seconds of read, compute and write of each stage for one detector."""
    seconds: dict[str, float] = {}
    full = repo.find_dataset("calexp", data_id, collections=INPUTS).data_id
    det = {"instrument": "SimCam", "detector": data_id["detector"]}

    def get(name, did):
        return repo.get(name, did, collections=INPUTS)

    def compute(label, stage, **inputs):
        if profiler is not None:
            profiler.enable()
        out, dt = _timed(stage.run, **inputs)
        if profiler is not None:
            profiler.disable()
        seconds[f"{label} compute"] = dt
        return out

    def write(label, outputs):
        start = time.perf_counter()
        with repo.transaction():
            for name, obj in outputs.items():
                repo.put(obj, name, data_id, run=SCRATCH_RUN, mode="overwrite")
        seconds[f"{label} write"] = time.perf_counter() - start

    start = time.perf_counter()
    isr_inputs = {
        "raw": get("raw", data_id),
        "bias": get("bias", det),
        "dark": get("dark", det),
        "flat": get("flat", {**det, "physical_filter": full["physical_filter"]}),
        "camera": get("camera", {"instrument": "SimCam"}),
    }
    seconds["isr read"] = time.perf_counter() - start
    out = compute("isr", IsrStage(), **isr_inputs)
    write("isr", {"postISRCCD": out["exposure"]})

    exposure, dt = _timed(repo.get, "postISRCCD", data_id, collections=[SCRATCH_RUN])
    seconds["characterize read"] = dt
    out = compute(
        "characterize",
        CharacterizeStage(),
        exposure=exposure,
        camera=isr_inputs["camera"],
        data_id=full,
    )
    write(
        "characterize",
        {
            "icExp": out["ic_exp"],
            "calexpBackground": out["background"],
            "icSrc": out["ic_src"],
            "icPsfStars": out["psf_stars"],
        },
    )

    start = time.perf_counter()
    exposure = repo.get("icExp", data_id, collections=[SCRATCH_RUN])
    refcat = {
        ref.data_id: repo.get(ref) for ref in repo.query_datasets("refcat", collections=INPUTS)
    }
    seconds["calibrate read"] = time.perf_counter() - start
    sources = repo.get("icSrc", data_id, collections=[SCRATCH_RUN])
    out = compute(
        "calibrate",
        CalibrateStage(),
        exposure=exposure,
        sources=sources,
        refcat=refcat,
        data_id=full,
    )
    write(
        "calibrate",
        {"calexp": out["calexp"], "src": out["src"], "calexpSummary": out["summary"]},
    )
    seconds["megapixels"] = exposure.image.size / 1e6
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", help="a repository made by `drp demo`")
    parser.add_argument("--detectors", type=int, default=6)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--profile-out", metavar="FILE", help="with --profile: also save the raw stats (pstats)"
    )
    args = parser.parse_args()
    repo = Repository(args.repo)
    refs = sorted(
        repo.query_datasets("calexp", collections=[DEMO_RUN]),
        key=lambda r: (r.data_id["visit"], r.data_id["detector"]),
    )
    if len(refs) < 2:
        sys.exit(f"{args.repo}: needs a demo repository with calexps (run `drp demo` first)")
    step = max(1, len(refs) // (args.detectors + 1))
    chosen = [
        {"instrument": "SimCam", "visit": r.data_id["visit"], "detector": r.data_id["detector"]}
        for r in refs[::step]
    ][: args.detectors + 1]
    try:
        run_detector(repo, chosen[0], None)  # warm-up
        profiler = cProfile.Profile() if args.profile else None
        rows = [run_detector(repo, did, profiler) for did in chosen[1:]]
    finally:
        repo.remove_run(SCRATCH_RUN)
    mpix = sum(r["megapixels"] for r in rows)
    keys = [k for k in rows[0] if k != "megapixels"]
    print(f"{len(rows)} detectors, {mpix:.2f} Mpix ({args.repo})\n")
    print(f"{'step':<26}{'s/detector':>12}{'s/Mpix':>10}")
    for key in keys:
        total = sum(r[key] for r in rows)
        print(f"{key:<26}{total / len(rows):>12.3f}{total / mpix:>10.3f}")
    compute = sum(r[k] for r in rows for k in keys if k.endswith("compute"))
    io = sum(r[k] for r in rows for k in keys if not k.endswith("compute"))
    print(f"\ncompute: {compute / mpix:.3f} s/Mpix = {mpix / compute:.2f} Mpix/s per core")
    print(
        f"with I/O: {(compute + io) / mpix:.3f} s/Mpix = {mpix / (compute + io):.2f} Mpix/s per core"
    )
    if profiler is not None:
        print()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        if args.profile_out:
            profiler.dump_stats(args.profile_out)


if __name__ == "__main__":
    main()
