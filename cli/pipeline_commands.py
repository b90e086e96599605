"""The pipeline commands of ``drp``: run, pipeline show, provenance, skymap, report and demo.

They are thin: parse options, call :mod:`stages`, print; :mod:`cli.main` adds :data:`COMMANDS`
to the ``drp`` group.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import click

from repo.errors import DrpError
from repo.regions import Circle, ConvexPolygon
from repo.repository import Repository
from repo.skymap import SkyMapConfig
from repo.storage import parse_storage_options

from .options import (
    bind_option,
    collections_option,
    config_option,
    format_option,
    open_repo,
    parse_binds,
    split_values,
    storage_option,
    where_option,
)
from .output import format_rows


@click.command()
@click.argument("repo")
@click.argument("pipeline")
@click.option(
    "--input",
    "-i",
    "inputs",
    multiple=True,
    required=True,
    metavar="COLL",
    help="Collections to read inputs from, searched in order (repeatable or a,b).",
)
@click.option("--output", "output_run", required=True, metavar="RUN", help="RUN for the outputs.")
@where_option
@bind_option
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes (default: one per CPU); -j 1 runs serially in this process.",
)
@click.option(
    "--dask",
    default=None,
    metavar="ADDR",
    help="Run on a Dask cluster: tcp://scheduler:8786, or 'local' for a local cluster of -j "
    "worker processes.",
)
@click.option("--dry-run", is_flag=True, help="Print the quantum graph and do nothing.")
@click.option("--details", is_flag=True, help="With --dry-run: list every quantum.")
@click.option(
    "--graph-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="With --dry-run: the graph as text or JSON.",
)
@click.option(
    "--clobber",
    is_flag=True,
    help="Redo quanta whose outputs exist already; also the way to accept a changed config.",
)
@click.option(
    "--keep-intermediates",
    is_flag=True,
    help="Also write the pipeline's intermediate images (e.g. postISRCCD, icExp), which are "
    "otherwise handed from stage to stage in memory.",
)
@config_option
@click.option("--skymap", default=None, help="Sky map to use if several are registered.")
@storage_option
def run(
    repo: str,
    pipeline: str,
    inputs: Sequence[str],
    output_run: str,
    where: str,
    binds: Sequence[str],
    jobs: int | None,
    dask: str | None,
    dry_run: bool,
    details: bool,
    graph_format: str,
    clobber: bool,
    keep_intermediates: bool,
    overrides: Sequence[str],
    skymap: str | None,
    storage_options: Sequence[str],
) -> None:
    """Run PIPELINE[#subset] on REPO: build the quantum graph, then run it in parallel.

    Quanta whose outputs already exist in the output run with the same config are skipped, so
    re-running the same command after a crash completes exactly what is missing. Outputs made
    with another config are refused unless --clobber is given. Exits with status 1 if any
    quantum failed (the summary lists each error; quanta downstream of a failure are blocked).
    The pipeline's intermediates (drp pipeline show lists them) pass from stage to stage in
    memory, each detector's chain in one worker, and are not written unless
    --keep-intermediates is given.

    \b
    Examples:
      drp run ./drp-demo drp#singleFrame --input SimCam/defaults --output u/me/sfp -j 2
      drp run ./drp-demo drp#singleFrame --input SimCam/defaults --output u/me/one
          --where "visit = 20251013001 AND detector = 1"
      drp run ./drp-demo drp#singleFrame --input SimCam/defaults --output u/me/bg
          --config characterize.background_mesh=128
      drp run s3://bucket/survey drp --input raw --output run1 --dask tcp://sched:8786
    """
    from stages.framework.executors import run_graph
    from stages.framework.graph import build_graph
    from stages.framework.pipeline import Pipeline
    from stages.framework.progress import make_progress

    pipe = Pipeline.load(pipeline, list(overrides))
    r = open_repo(repo, storage_options)
    graph = build_graph(
        r,
        pipe,
        output_run=output_run,
        inputs=split_values(inputs),
        where=where,
        binds=parse_binds(binds),
        clobber=clobber,
        skymap=skymap,
        keep_intermediates=keep_intermediates,
    )
    if dry_run:
        click.echo(graph.to_json() if graph_format == "json" else graph.describe(details=details))
        return
    counts = graph.counts()
    to_run = sum(c["run"] for c in counts.values())
    total = sum(c["quanta"] for c in counts.values())
    if not to_run:
        click.echo(f"nothing to do: all {total} quanta are done in run {output_run!r}")
        return
    click.echo(f"{to_run} of {total} quanta to run ({total - to_run} already done)", err=True)
    summary = run_graph(
        r, graph, jobs=jobs or os.cpu_count() or 1, dask=dask, progress=make_progress()
    )
    click.echo(f"pipeline {pipe.source} into {output_run}: {summary.describe()}")
    if not summary.ok:
        sys.exit(1)


@click.group("pipeline")
def pipeline_group() -> None:
    """Inspect pipelines (YAML files, or 'drp' for the pipeline shipped with drp)."""


@pipeline_group.command("show")
@click.argument("pipeline")
@config_option
def pipeline_show(pipeline: str, overrides: Sequence[str]) -> None:
    """Show the stages of PIPELINE[#subset]: dimensions, inputs, outputs, config, subsets.

    Example: drp pipeline show drp#singleFrame --config characterize.background_mesh=128
    """
    from stages.framework.pipeline import Pipeline

    click.echo(Pipeline.load(pipeline, list(overrides)).describe())


@click.command()
@click.argument("repo")
@click.argument("dataset_type")
@collections_option
@where_option
@bind_option
@click.option("--depth", type=click.IntRange(min=1), default=None, help="Quanta to follow back.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@storage_option
def provenance(
    repo: str,
    dataset_type: str,
    collections: Sequence[str],
    where: str,
    binds: Sequence[str],
    depth: int | None,
    fmt: str,
    storage_options: Sequence[str],
) -> None:
    """Show how datasets were made: quanta and their inputs, back to the raws.

    Example: drp provenance ./drp-demo src --collections SimCam/runs/demo
    --where "visit = 20251013001 AND detector = 0"
    """
    from stages.framework.provenance import trace_provenance

    r = open_repo(repo, storage_options)
    refs = r.query_datasets(
        dataset_type,
        collections=split_values(collections) or None,
        where=where,
        binds=parse_binds(binds),
    )
    if not refs:
        raise DrpError(f"no {dataset_type} datasets match {where or 'the query'}")
    graph = trace_provenance(r, refs, max_depth=depth)
    click.echo(graph.to_json() if fmt == "json" else graph.to_text())


# -- sky map -------------------------------------------------------------------------------------


@click.group()
@click.argument("repo")
@storage_option
@click.pass_context
def skymap(ctx: click.Context, repo: str, storage_options: Sequence[str]) -> None:
    """Register a sky map in REPO, show it, and find what covers a position, region or visit.

    \b
    Examples:
      drp skymap ./repo register --preset default
      drp skymap ./repo show --tract 9000
      drp skymap ./repo find --ra 150.1 --dec 2.2 --radius 0.5
    """
    ctx.obj = (repo, storage_options)


def _skymap_repo(ctx: click.Context) -> Any:
    repo, storage_options = ctx.obj
    return open_repo(repo, storage_options)


@skymap.command("register")
@click.option(
    "--preset",
    type=click.Choice(["default", "lsst_like", "test"]),
    default="default",
    show_default=True,
    help="Sky-map configuration (see repo.skymap).",
)
@click.option("--name", default=None, help="Name of the sky map (default: the preset's).")
@click.option(
    "--config-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="JSON sky-map configuration instead of a preset.",
)
@click.option("--tracts", multiple=True, metavar="IDS", help="Tracts to write records for.")
@click.option("--no-visits", is_flag=True, help="Skip the tracts the repository's visits touch.")
@click.pass_context
def skymap_register(
    ctx: click.Context,
    preset: str,
    name: str | None,
    config_file: str | None,
    tracts: Sequence[str],
    no_visits: bool,
) -> None:
    """Register a sky map (its skymap record, and tract and patch records for the tracts
    asked for and those the repository's visits overlap)."""
    from stages.framework.skymap_setup import PRESETS, register_skymap

    if config_file:
        with open(config_file, encoding="utf-8") as f:
            config = SkyMapConfig.from_json(f.read())
    else:
        config = PRESETS[preset]()
    if name:
        config = SkyMapConfig.from_dict({**config.to_dict(), "name": name})
    tract_ids = [int(t) for t in split_values(tracts)]
    result = register_skymap(_skymap_repo(ctx), config, tracts=tract_ids, for_visits=not no_visits)
    click.echo(
        f"registered sky map {config.name} ({result.skymap.num_tracts} tracts, hash "
        f"{config.hash[:12]}); records for {len(result.tracts)} tract(s): "
        f"{result.new_tract_records} new tract and {result.new_patch_records} new patch records"
    )


@skymap.command("show")
@click.option("--name", default=None, help="Sky map name (needed if several are registered).")
@click.option("--tract", type=int, default=None, help="Describe this tract.")
@click.option("--patch", type=int, default=None, help="With --tract: describe this patch.")
@format_option
@click.pass_context
def skymap_show(
    ctx: click.Context, name: str | None, tract: int | None, patch: int | None, fmt: str
) -> None:
    """Show a registered sky map, one of its tracts, or one of its patches."""
    from stages.framework.skymap_setup import load_skymap

    r = _skymap_repo(ctx)
    sky = load_skymap(r, name)
    if tract is None:
        registered = r.query_dimension_records(
            "tract", where="skymap = :name", binds={"name": sky.name}
        )
        row = {
            "name": sky.name,
            "hash": sky.config.hash,
            "tracts": sky.num_tracts,
            "tracts_with_records": len(registered),
            **sky.config.to_dict(),
        }
        click.echo(format_rows([row], fmt))
        return
    info = sky.tract(tract)
    if patch is None:
        row = {
            "tract": info.id,
            "ring": info.ring,
            "ra": info.center[0],
            "dec": info.center[1],
            "nx": info.bbox[0],
            "ny": info.bbox[1],
            "patches_x": info.num_patches[0],
            "patches_y": info.num_patches[1],
            "pixel_scale_arcsec": info.pixel_scale_arcsec,
            "crval": list(info.wcs.wcs.crval),
            "crpix": list(info.wcs.wcs.crpix),
        }
        click.echo(format_rows([row], fmt))
        return
    p = sky.patch(tract, patch)
    ra, dec = p.outer_region.vertices_radec()
    row = {
        "tract": p.tract,
        "patch": p.id,
        "cell_x": p.index[0],
        "cell_y": p.index[1],
        "bbox": list(p.bbox),
        "inner_bbox": list(p.inner_bbox),
        "corners": [[round(float(a), 6), round(float(b), 6)] for a, b in zip(ra, dec, strict=True)],
    }
    click.echo(format_rows([row], fmt))


@skymap.command("find")
@click.option("--name", default=None, help="Sky map name (needed if several are registered).")
@click.option("--ra", type=float, default=None, help="Right ascension (deg).")
@click.option("--dec", type=float, default=None, help="Declination (deg).")
@click.option("--radius", type=float, default=None, help="With --ra/--dec: a circle (deg).")
@click.option("--region", default=None, help="A polygon as JSON [[ra, dec], ...] (deg).")
@click.option("--visit", type=int, default=None, help="A visit's footprint (from its regions).")
@click.option("--detector", type=int, default=None, help="With --visit: one detector.")
@click.option("--instrument", default=None, help="With --visit: the instrument (if several).")
@format_option
@click.pass_context
def skymap_find(
    ctx: click.Context,
    name: str | None,
    ra: float | None,
    dec: float | None,
    radius: float | None,
    region: str | None,
    visit: int | None,
    detector: int | None,
    instrument: str | None,
    fmt: str,
) -> None:
    """Which tracts and patches cover a position (the one owning it), a circle, a polygon or a
    visit (its detectors' footprints); a region lists every patch whose outer box overlaps it.

    \b
    Examples:
      drp skymap ./repo find --ra 150.1 --dec 2.2
      drp skymap ./repo find --region "[[150,2],[151,2],[151,3],[150,3]]"
      drp skymap ./repo find --visit 12 --detector 3
    """
    from stages.framework.overlaps import RegionOverlaps
    from stages.framework.skymap_setup import find_region_patches, load_skymap

    chosen = sum(x is not None for x in (region, visit)) + (ra is not None or dec is not None)
    if chosen != 1:
        raise click.UsageError("give exactly one of --ra/--dec, --region or --visit")
    r = _skymap_repo(ctx)
    sky = load_skymap(r, name)
    if ra is not None or dec is not None:
        if ra is None or dec is None:
            raise click.UsageError("--ra and --dec go together")
        if radius is None:
            owner = sky.find_tract(ra, dec)
            rows = [{"tract": owner, "patch": sky.find_patch(owner, ra, dec), "owns": True}]
            click.echo(format_rows(rows, fmt))
            return
        pairs = find_region_patches(sky, Circle(ra, dec, radius))
    elif region is not None:
        try:
            polygon = ConvexPolygon.from_json(region)
        except DrpError as exc:
            raise click.BadParameter(str(exc), param_hint="--region") from None
        pairs = find_region_patches(sky, polygon)
    else:
        overlaps = RegionOverlaps.from_repository(r, sky)
        inst = instrument or _only_instrument(r)
        data_id = {"instrument": inst, "visit": visit}
        if detector is not None:
            data_id["detector"] = detector
        pairs = list(overlaps.patches(data_id))
    click.echo(format_rows([{"tract": t, "patch": p} for t, p in pairs], fmt))


@click.command()
@click.argument("repo")
@collections_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, writable=True),
    help="Also draw the report (photometry, astrometry, zero points, PSF) into this PNG.",
)
@click.option(
    "-j", "--jobs", type=click.IntRange(min=0), default=0, help="Processes (default: all cores)."
)
@storage_option
def report(
    repo: str,
    collections: Sequence[str],
    as_json: bool,
    plot_path: str | None,
    jobs: int,
    storage_options: Sequence[str],
) -> None:
    """Score the single-frame outputs in REPO against the simulator's truth, and real DECam
    outputs against the Legacy Surveys' CCD table when it is in the collections.

    Figures are null (n/a) where the datasets they need do not exist. The default collections
    are those of drp demo: SimCam/runs/demo, SimCam/defaults. Fallbacks (PSF not fitted, WCS
    kept, nominal zero point) are counted.

    \b
    Examples:
      drp report ./drp-demo
      drp report ./drp-demo --plot report.png
      drp report ./drp-demo --collections u/me/sfp,SimCam/defaults --json
      drp report ./decam --collections DECam/sfp,DECam/ccds   (after drp ingest of the
                                                                survey-ccds table)
    """
    import json

    from stages.demo import DEFAULTS, DEMO_RUN
    from stages.quality.external import compare_with_survey_ccds, format_survey_comparison
    from stages.quality.report import REPORT_KEYS, collect_report, format_report

    r = open_repo(repo, storage_options)
    chosen = split_values(collections) or [DEMO_RUN, DEFAULTS]
    data = collect_report(r, chosen, jobs=jobs)
    scores = data.report
    survey = compare_with_survey_ccds(r, chosen)
    if as_json:
        click.echo(json.dumps({**scores, "survey_ccds": survey}, indent=1))
    else:
        if survey is None or any(scores.get(key) is not None for key in REPORT_KEYS):
            click.echo(format_report(scores))  # truth figures, unless none (real data)
        else:
            click.echo(format_report(scores).splitlines()[-1])  # the fallbacks
        if survey is not None:
            click.echo(format_survey_comparison(survey))
    if plot_path:
        from stages.quality.plots import plot_report

        written = plot_report(data, plot_path)
        click.echo(f"plot: {written}", err=as_json)


def _only_instrument(repo: Any) -> str:
    names = [row["name"] for row in repo.query_dimension_records("instrument")]
    if len(names) != 1:
        raise click.UsageError(
            f"say which instrument with --instrument ({', '.join(names) or 'none registered'})"
        )
    return names[0]


@click.command()
@click.argument("repo", default="drp-demo")
@click.option(
    "--preset",
    type=click.Choice(["tiny", "default"]),
    default="default",
    show_default=True,
    help="Survey size preset.",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Simulation seed.")
@click.option("--detectors", type=int, default=None, help="Detectors in the camera.")
@click.option(
    "--visits",
    "epochs",
    type=int,
    default=None,
    help="Epochs (each epoch observes every band once).",
)
@click.option("--bands", default=None, help="Bands, e.g. g,r,i.")
@click.option("--size", type=int, default=None, help="Detector size in pixels (square).")
@click.option("-j", "--jobs", type=int, default=0, help="Worker processes (default: all cores).")
@click.option(
    "--keep-intermediates",
    is_flag=True,
    help="Also write the intermediate images (postISRCCD, icExp, flatUnnormalized: about "
    "600 MB more).",
)
@storage_option
def demo(
    repo: str,
    preset: str,
    seed: int,
    detectors: int | None,
    epochs: int | None,
    bands: str | None,
    size: int | None,
    jobs: int,
    keep_intermediates: bool,
    storage_options: Sequence[str],
) -> None:
    """Simulate a small survey into REPO, process it and print the report; run again to resume.

    The default pipeline (single-frame processing, warps and co-adds on the default sky map)
    runs from SimCam/defaults into SimCam/runs/demo (see drp pipeline show drp); the report
    scores it against the simulator's truth (drp report REPO --json for the figures as JSON).

    Example: drp demo ./drp-demo --preset tiny
    """
    import time

    from stages.demo import DEFAULTS, DEMO_PIPELINE, DEMO_RUN, process_survey, simulate_survey
    from stages.quality.report import format_report, score_repository
    from stages.simulate import SurveyConfig

    options = {
        "n_detectors": detectors,
        "n_epochs": epochs,
        "size": size,
        "bands": tuple(split_values([bands])) if bands else None,
    }
    config = SurveyConfig.from_preset(preset, seed=seed, **options)
    r = Repository.create(repo, parse_storage_options(storage_options), exist_ok=True)
    click.echo(
        f"simulating the {preset} survey into {r.storage.url} "
        f"({config.n_detectors} detectors of {config.size}^2, bands "
        f"{','.join(config.bands)}, {config.n_epochs} epochs, seed {config.seed})"
    )
    summary = simulate_survey(r, config, jobs=jobs)
    if summary.simulated:
        click.echo(
            f"simulation: {summary.simulated} raws simulated, {summary.skipped} already there, "
            f"{summary.megapixels:.1f} Mpix in {summary.seconds:.1f} s "
            f"({summary.mpix_per_second:.2f} Mpix/s)"
        )
    else:
        click.echo(
            f"simulation: all {summary.skipped} raws already there ({summary.seconds:.1f} s)"
        )
    start = time.perf_counter()
    run = process_survey(r, jobs=jobs, keep_intermediates=keep_intermediates)
    click.echo(f"pipeline {DEMO_PIPELINE} into {DEMO_RUN}: {run.describe()}")
    click.echo(f"processing took {time.perf_counter() - start:.1f} s")
    click.echo(_footprint(r))
    click.echo(format_report(score_repository(r, [DEMO_RUN, DEFAULTS], jobs=jobs)))
    click.echo(
        f"as figures: drp report {r.storage.url} --plot report.png; every dataset: "
        f"drp query-datasets {r.storage.url}"
    )
    if not run.ok:
        sys.exit(1)


def _footprint(repo: Repository) -> str:
    """What the repository holds: datasets and megabytes per run, and in all (registry too)."""
    rows = repo.sql(
        "SELECT run, count(*) AS datasets, sum(size) AS bytes FROM datasets GROUP BY run "
        "ORDER BY run"
    ).to_pylist()
    registry = sum(size for _, size in repo.storage.walk_files("registry"))
    total = sum(int(row["bytes"]) for row in rows) + registry
    width = max((len(row["run"]) for row in rows), default=0)
    lines = [
        f"the repository holds {total / 1e6:.0f} MB: {sum(r['datasets'] for r in rows)} "
        f"datasets ({(total - registry) / 1e6:.0f} MB) and the registry "
        f"({registry / 1e6:.1f} MB)"
    ]
    lines.extend(
        f"  {row['run']:<{width}}  {row['datasets']:>5} datasets  {int(row['bytes']) / 1e6:>7.1f} MB"
        for row in rows
    )
    return "\n".join(lines)


COMMANDS = [run, pipeline_group, provenance, skymap, report, demo]
