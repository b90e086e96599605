"""The repository commands of ``drp``: create, ingest, ingest-refcat, query, collections, remove, verify,
compact, transfer and sql. Thin: parse options, call :mod:`repo`, print."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from repo.repository import SQL_MEMORY_LIMIT, SQL_TIMEOUT, Repository, transfer
from repo.storage import parse_storage_options

from .options import (
    bind_option,
    collections_option,
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
@storage_option
def create(repo: str, storage_options: Sequence[str]) -> None:
    """Create an empty repository at REPO.

    Example: drp create ./myrepo    or    drp create s3://bucket/survey
    """
    created = Repository.create(repo, parse_storage_options(storage_options))
    click.echo(f"created repository {created.storage.url}")


@click.command("register-dataset-type")
@click.argument("repo")
@click.argument("name")
@click.option(
    "--dimensions",
    multiple=True,
    required=True,
    metavar="DIMS",
    help="Dimensions, e.g. visit,detector (repeatable).",
)
@click.option(
    "--storage-class",
    required=True,
    type=click.Choice(["Exposure", "Image", "Fits", "Catalog", "StructuredData"]),
)
@storage_option
def register_dataset_type(
    repo: str,
    name: str,
    dimensions: Sequence[str],
    storage_class: str,
    storage_options: Sequence[str],
) -> None:
    """Register dataset type NAME with its dimensions and storage class.

    Example: drp register-dataset-type ./myrepo src --dimensions visit,detector
    --storage-class Catalog
    """
    r = open_repo(repo, storage_options)
    dataset_type = r.register_dataset_type(name, split_values(dimensions), storage_class)
    click.echo(f"registered {dataset_type}")


@click.command("register-instrument")
@click.argument("repo")
@click.argument("instrument")
@storage_option
def register_instrument(repo: str, instrument: str, storage_options: Sequence[str]) -> None:
    """Insert the records (filters, detectors) of INSTRUMENT, e.g. SimCam or DECam.

    Example: drp register-instrument ./myrepo DECam
    """
    from repo.instruments.base import get_instrument

    inst = get_instrument(instrument)
    open_repo(repo, storage_options).register_instrument(inst)
    click.echo(f"registered instrument {inst.name}")


@click.command()
@click.argument("repo")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--run", required=True, help="RUN collection to ingest into.")
@click.option("--instrument", default=None, help="Instrument name (default: from the headers).")
@click.option(
    "--transfer",
    type=click.Choice(["copy", "link", "direct"]),
    default="copy",
    show_default=True,
    help="Copy, hard-link, or leave the files in place.",
)
@click.option("--skip-existing", is_flag=True, help="Skip datasets that exist already.")
@storage_option
def ingest(
    repo: str,
    files: Sequence[str],
    run: str,
    instrument: str | None,
    transfer: str,
    skip_existing: bool,
    storage_options: Sequence[str],
) -> None:
    """Register existing FITS FILES as datasets, with dataIds from their headers.

    Example: drp ingest ./myrepo images/*_oo[idw]_*.fits --run DECam/raw
    """
    from repo.ingest import ingest as do_ingest

    r = open_repo(repo, storage_options)
    refs = do_ingest(
        r,
        list(files),
        run=run,
        instrument=instrument,
        transfer=transfer,
        mode="skip" if skip_existing else "error",
    )
    by_type: dict[str, int] = {}
    for ref in refs:
        by_type[ref.dataset_type.name] = by_type.get(ref.dataset_type.name, 0) + 1
    kinds = ", ".join(f"{n} {name}" for name, n in by_type.items())
    line = f"ingested {len(refs)} dataset(s) from {len(files)} file(s) into {run}: {kinds}"
    if len(refs) < len(files):
        line += " (the files of one exposure, such as image, weight and mask, make one dataset)"
    click.echo(line)


@click.command("ingest-refcat")
@click.argument("repo")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--run", default="refcats/gaia", show_default=True, help="RUN collection.")
@click.option(
    "--dataset-type",
    default="refcat",
    show_default=True,
    help="Dataset type of the catalog (the calibration stages read 'refcat').",
)
@click.option("--skip-existing", is_flag=True, help="Do nothing if the catalog exists already.")
@storage_option
def ingest_refcat(
    repo: str,
    files: Sequence[str],
    run: str,
    dataset_type: str,
    skip_existing: bool,
    storage_options: Sequence[str],
) -> None:
    """Ingest Gaia FILES as a reference catalog for astrometric and photometric calibration.

    The files are Gaia tables with the archive's column names (DR2, EDR3 or DR3: positions,
    proper motions, their errors and epoch, G/BP/RP magnitudes), such as legacypipe's
    chunk-NNNNN.fits shards. The stars are stored in HEALPix shards (dimension healpix7,
    ~0.46 deg pixels): a calibration quantum reads those its detector overlaps. Pass the
    run as an --input of `drp run`.

    Example: drp ingest-refcat ./myrepo gaia/chunk-*.fits --run refcats/gaia
    """
    from stages.calibrate.refcat import (
        REFCAT_HEALPIX_ORDER,
        put_refcat_shards,
        read_gaia_shards,
    )

    r = open_repo(repo, storage_options)
    refcat = read_gaia_shards(list(files))
    mode = "skip" if skip_existing else "error"
    n_shards = put_refcat_shards(r, refcat, dataset_type, run, mode=mode)
    epochs = sorted({float(e) for e in refcat["epoch"]})
    click.echo(
        f"ingested {len(refcat)} reference stars from {len(files)} file(s) into {run} as "
        f"{dataset_type}: {n_shards} HEALPix shard(s) of order {REFCAT_HEALPIX_ORDER} "
        f"(epoch {', '.join(f'{e:g}' for e in epochs)})"
    )


def _ref_row(ref: Any) -> dict[str, Any]:
    return {
        "dataset_type": ref.dataset_type.name,
        "run": ref.run,
        **dict(ref.data_id),
        "id": ref.id,
        "path": ref.path,
    }


@click.command("query-datasets")
@click.argument("repo")
@click.argument("dataset_types", nargs=-1)
@collections_option
@where_option
@bind_option
@click.option(
    "--all-matches",
    is_flag=True,
    help="Show matches in every collection, not only the first in search order.",
)
@format_option
@storage_option
def query_datasets(
    repo: str,
    dataset_types: Sequence[str],
    collections: Sequence[str],
    where: str,
    binds: Sequence[str],
    all_matches: bool,
    fmt: str,
    storage_options: Sequence[str],
) -> None:
    """List datasets (of the given types; all types if none) matching --where.

    Example: drp query-datasets ./myrepo src --where "visit IN (1..20) AND band = 'r'"
    --format json
    """
    r = open_repo(repo, storage_options)
    refs = r.query_datasets(
        list(dataset_types) or None,
        collections=split_values(collections) or None,
        where=where,
        binds=parse_binds(binds),
        find_first=not all_matches,
    )
    click.echo(format_rows([_ref_row(ref) for ref in refs], fmt))


@click.command("query-data-ids")
@click.argument("repo")
@click.argument("dimensions", nargs=-1, required=True)
@click.option("--datasets", multiple=True, help="Only dataIds of existing datasets of a type.")
@collections_option
@where_option
@bind_option
@format_option
@storage_option
def query_data_ids(
    repo: str,
    dimensions: Sequence[str],
    datasets: Sequence[str],
    collections: Sequence[str],
    where: str,
    binds: Sequence[str],
    fmt: str,
    storage_options: Sequence[str],
) -> None:
    """List dataIds over DIMENSIONS (from dimension records, or from datasets).

    Example: drp query-data-ids ./myrepo visit detector --where "band = 'g'"
    """
    r = open_repo(repo, storage_options)
    ids = r.query_data_ids(
        split_values(dimensions),
        where=where,
        binds=parse_binds(binds),
        datasets=split_values(datasets) or None,
        collections=split_values(collections) or None,
    )
    click.echo(format_rows([dict(i) for i in ids], fmt))


@click.command("query-dimension-records")
@click.argument("repo")
@click.argument("element")
@where_option
@bind_option
@format_option
@storage_option
def query_dimension_records(
    repo: str,
    element: str,
    where: str,
    binds: Sequence[str],
    fmt: str,
    storage_options: Sequence[str],
) -> None:
    """List the records of a dimension ELEMENT (visit, detector, tract, ...).

    Example: drp query-dimension-records ./myrepo visit --where "exposure_time > 20"
    """
    r = open_repo(repo, storage_options)
    click.echo(
        format_rows(r.query_dimension_records(element, where=where, binds=parse_binds(binds)), fmt)
    )


@click.command()
@click.argument("args", nargs=-1, required=True)
@format_option
@storage_option
def collections(args: Sequence[str], fmt: str, storage_options: Sequence[str]) -> None:
    """List collections, or define a chained collection.

    \b
    drp collections REPO                       list RUN and CHAINED collections
    drp collections chain REPO NAME CHILD...   define NAME as a search path over CHILDs
    Example: drp collections chain ./myrepo DECam/defaults DECam/calib DECam/raw
    """
    if args[0] == "chain":
        if len(args) < 4:
            raise click.UsageError("usage: drp collections chain REPO NAME CHILD [CHILD...]")
        r = open_repo(args[1], storage_options)
        chain = r.registry.define_chain(args[2], list(args[3:]))
        click.echo(f"defined chain {chain.name} -> {', '.join(chain.children)}")
        return
    if len(args) != 1:
        raise click.UsageError("usage: drp collections REPO  (or: drp collections chain ...)")
    r = open_repo(args[0], storage_options)
    rows = [
        {"name": c.name, "type": c.type, "children": ", ".join(c.children)} for c in r.collections()
    ]
    click.echo(format_rows(rows, fmt, ["name", "type", "children"]))


@click.command()
@click.argument("repo")
@click.argument("dataset_types", nargs=-1)
@click.option("--run", default=None, help="Remove this RUN collection and all its datasets.")
@collections_option
@where_option
@bind_option
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@storage_option
def remove(
    repo: str,
    dataset_types: Sequence[str],
    run: str | None,
    collections: Sequence[str],
    where: str,
    binds: Sequence[str],
    dry_run: bool,
    storage_options: Sequence[str],
) -> None:
    """Remove a run, or the datasets matching a query (records first, then files).

    \b
    Examples: drp remove ./myrepo --run u/me/test
              drp remove ./myrepo src --collections u/me/test --where "visit = 12"
    """
    r = open_repo(repo, storage_options)
    if run is not None:
        if dataset_types or collections or where:
            raise click.UsageError("--run removes a whole run; give no types or --where with it")
        refs = r.query_datasets(collections=run, find_first=False)
        if dry_run:
            click.echo(f"would remove run {run} with {len(refs)} dataset(s)")
            return
        click.echo(f"removed run {run} with {r.remove_run(run)} dataset(s)")
        return
    if not (dataset_types or collections or where):
        raise click.UsageError("say what to remove: --run, or dataset types/--collections/--where")
    refs = r.query_datasets(
        list(dataset_types) or None,
        collections=split_values(collections) or None,
        where=where,
        binds=parse_binds(binds),
        find_first=False,
    )
    if dry_run:
        click.echo(f"would remove {len(refs)} dataset(s)")
        return
    click.echo(f"removed {r.remove_datasets(refs)} dataset(s)")


@click.command()
@click.argument("repo")
@click.option("--no-checksums", is_flag=True, help="Check sizes only (faster on S3).")
@click.option(
    "--forget-missing",
    is_flag=True,
    help="Drop the records of datasets whose file is missing (a run then makes them again).",
)
@click.option(
    "--register-orphans",
    is_flag=True,
    help="Record again the files without a record whose path gives their dataset type, run "
    "and dataId (after a registry file was lost or moved aside).",
)
@click.option(
    "--delete-orphans",
    is_flag=True,
    help="Delete files that have no record, and temporary files older than an hour.",
)
@storage_option
def verify(
    repo: str,
    no_checksums: bool,
    forget_missing: bool,
    register_orphans: bool,
    delete_orphans: bool,
    storage_options: Sequence[str],
) -> None:
    """Check every record has its file with the right size and checksum; list orphans.

    Temporary files (.tmp-*: writes in progress, or left by a killed process) are counted but
    are not a fault. Exits with status 1 if anything is wrong (after the repairs asked for).

    \b
    Examples:
      drp verify ./drp-demo
      drp verify ./drp-demo --forget-missing      # then drp run remakes what was lost
      drp verify ./drp-demo --register-orphans    # files whose record is gone
    """
    r = open_repo(repo, storage_options)
    report = r.verify(checksums=not no_checksums)
    for label, items in (
        ("missing file", report.missing),
        ("wrong size", report.bad_size),
        ("bad checksum", report.bad_checksum),
        ("orphan", report.orphans),
    ):
        for item in items:
            click.echo(f"{label}: {item}")
    if forget_missing and report.missing_refs:
        forgotten = r.remove_datasets(report.missing_refs, delete_files=False)
        click.echo(f"forgot {forgotten} dataset(s) whose file is missing")
        report.missing, report.missing_refs = [], []
    if register_orphans and report.orphans:
        recorded, left = r.register_orphans(report)
        click.echo(f"recorded again {len(recorded)} orphan file(s); {len(left)} left as orphans")
        report.orphans = left
    if delete_orphans and (report.orphans or report.temporary):
        click.echo(f"deleted {r.delete_orphans(report)} orphan or old temporary file(s)")
        report.orphans = []
    temporary = f", {len(report.temporary)} temporary file(s)" if report.temporary else ""
    click.echo(
        f"checked {report.checked} dataset(s): "
        f"{len(report.missing)} missing, {len(report.bad_size)} wrong size, "
        f"{len(report.bad_checksum)} bad checksum, {len(report.orphans)} orphan(s){temporary}"
    )
    if not report.ok:
        sys.exit(1)


@click.command()
@click.argument("repo")
@storage_option
def compact(repo: str, storage_options: Sequence[str]) -> None:
    """Merge the registry's many small files into few (safe with concurrent writers).

    Example: drp compact s3://bucket/survey
    """
    r = open_repo(repo, storage_options)
    for table, (files, rows) in r.compact().items():
        click.echo(f"{table}: merged {files} file(s), {rows} row(s)")


@click.command("transfer")
@click.argument("source")
@click.argument("dest")
@click.argument("dataset_types", nargs=-1)
@collections_option
@where_option
@bind_option
@storage_option
@click.option(
    "--dest-storage-option",
    "dest_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Storage option for DEST (default: the same as --storage-option).",
)
@click.option("--create", is_flag=True, help="Create DEST if it is not a repository yet.")
def transfer_cmd(
    source: str,
    dest: str,
    dataset_types: Sequence[str],
    collections: Sequence[str],
    where: str,
    binds: Sequence[str],
    storage_options: Sequence[str],
    dest_options: Sequence[str],
    create: bool,
) -> None:
    """Copy datasets (files, records, provenance) from SOURCE to DEST.

    Example: drp transfer ./myrepo s3://bucket/survey src --collections run1 --create
    """
    src = open_repo(source, storage_options)
    dest_opts = parse_storage_options(dest_options or storage_options)
    if create:
        dst = Repository.create(dest, dest_opts, exist_ok=True)
    else:
        dst = Repository(dest, dest_opts)
    refs = src.query_datasets(
        list(dataset_types) or None,
        collections=split_values(collections) or None,
        where=where,
        binds=parse_binds(binds),
        find_first=False,
    )
    copied = transfer(src, dst, refs)
    click.echo(f"transferred {copied} dataset(s) ({len(refs) - copied} already there)")


@click.command()
@click.argument("repo")
@click.argument("query")
@collections_option
@click.option(
    "--memory-limit",
    default=SQL_MEMORY_LIMIT,
    show_default=True,
    help="DuckDB memory limit of the query, e.g. 512MB or 8GB.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=SQL_TIMEOUT,
    show_default=True,
    help="Seconds before the query is stopped.",
)
@format_option
@storage_option
def sql(
    repo: str,
    query: str,
    collections: Sequence[str],
    memory_limit: str,
    timeout: float,
    fmt: str,
    storage_options: Sequence[str],
) -> None:
    """Run a read-only SELECT with DuckDB over the registry and the catalogs.

    Tables: datasets, one per dimension (visit, detector, tract, ...), one per Catalog dataset
    type (e.g. src) with its hive partition columns. The query reads those and nothing else (no
    other file, no extension), within its memory and time limits.

    Example: drp sql ./drp-demo "SELECT band, count(*) FROM src GROUP BY band"
    """
    r = open_repo(repo, storage_options)
    table = r.sql(
        query,
        collections=split_values(collections) or None,
        memory_limit=memory_limit,
        timeout=timeout,
    )
    click.echo(format_rows(table.to_pylist(), fmt, table.column_names))


COMMANDS = [
    create,
    register_dataset_type,
    register_instrument,
    ingest,
    ingest_refcat,
    query_datasets,
    query_data_ids,
    query_dimension_records,
    collections,
    remove,
    verify,
    compact,
    transfer_cmd,
    sql,
]
