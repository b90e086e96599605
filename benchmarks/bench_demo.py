"""Benchmark ``drp demo`` end to end: wall time, disk footprint, time per stage, report figures.

Run by hand; prints figures, asserts nothing::

    python benchmarks/bench_demo.py                          # this checkout, default preset
    python benchmarks/bench_demo.py --source /tmp/old-drp    # another checkout (git archive)
    python benchmarks/bench_demo.py --keep-intermediates --json out.json

Each run starts from an empty repository in a scratch directory (removed afterwards unless
``--keep``). ``--source`` runs the ``drp`` of another source tree (its ``cli.main``, with that
tree first on ``PYTHONPATH``, workers included), so that two versions are measured in one
sitting on the same machine. The disk footprint is the bytes of every file in the repository
(``du -sb``); the stage times are summed from the registry's quantum records (start to end of
each quantum, in the worker), read with the ``repo`` package of the source tree measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def footprint(root: str) -> int:
    """Bytes of all files under ``root``."""
    return sum(
        os.path.getsize(os.path.join(folder, name))
        for folder, _, names in os.walk(root)
        for name in names
    )


def stage_times(source: str, root: str) -> list[tuple]:
    """(stage, quanta, mean seconds, total seconds) from the quantum records."""
    script = (
        "import json, sys; from repo.repository import Repository; "
        "q = Repository(sys.argv[1]).registry.current_quanta(); "
        "print(json.dumps(q.select('stage', 'start', 'end').rows()))"
    )
    env = {**os.environ, "PYTHONPATH": source}
    out = subprocess.run(
        [sys.executable, "-c", script, root], env=env, capture_output=True, text=True, check=True
    )
    stages: dict[str, list[float]] = {}
    first: dict[str, float] = {}
    for stage, start, end in json.loads(out.stdout):
        stages.setdefault(stage, []).append(end - start)
        first[stage] = min(first.get(stage, start), start)
    return [
        (stage, len(times), sum(times) / len(times), sum(times))
        for stage, times in sorted(stages.items(), key=lambda item: first[item[0]])
    ]


def run(source: str, repo: str, extra: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-c", "from cli.main import main; main()", "demo", repo, *extra]
    start = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=source, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"drp demo failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return seconds


def report(source: str, repo: str) -> dict:
    env = {**os.environ, "PYTHONPATH": source}
    command = [sys.executable, "-c", "from cli.main import main; main()", "report", repo, "--json"]
    out = subprocess.run(command, env=env, cwd=source, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=HERE, help="source tree to run (default: this one)")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--keep-intermediates", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the repository")
    parser.add_argument("--json", metavar="FILE", help="also write the report's figures here")
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="bench-demo-")
    repo = os.path.join(scratch, "repo")
    extra = ["--preset", args.preset] + (
        ["--keep-intermediates"] if args.keep_intermediates else []
    )
    try:
        seconds = run(os.path.abspath(args.source), repo, extra)
        size = footprint(repo)
        stages = stage_times(os.path.abspath(args.source), repo)
        figures = report(os.path.abspath(args.source), repo)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"drp demo ({args.source}, preset {args.preset}): {seconds:.1f} s wall, "
          f"{size / 1e6:.0f} MB on disk" + (f" in {repo}" if args.keep else ""))  # fmt: skip
    print(f"\n{'stage':<20}{'quanta':>8}{'mean s':>9}{'total s':>9}")
    for stage, n, mean, total in stages:
        print(f"{stage:<20}{n:>8}{mean:>9.3f}{total:>9.1f}")
    print()
    for key, value in figures.items():
        if isinstance(value, float):
            print(f"{key:<34}{value:.5g}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
