"""Registering a sky map in a repository, loading it back, and looking up what covers what.

A sky map is registered as dimension records: one ``skymap`` record holding its configuration
(JSON) and hash, and ``tract`` and ``patch`` records for the tracts in use. Anything that needs the
geometry rebuilds the :class:`~repo.skymap.RingsSkyMap` from the configuration in the record
(:func:`load_skymap`), so every process and machine uses exactly the registered tessellation.

Tract and patch records are written for the tracts asked for, for the tracts that the repository's
visits overlap, and by :mod:`stages.framework.graph` before a run for the tracts its quanta use; writing them
again is harmless (identical records are skipped).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import polars as pl

from repo.errors import DimensionRecordError
from repo.regions import Circle, ConvexPolygon
from repo.repository import Repository
from repo.skymap import RingsSkyMap, SkyMapConfig

from .overlaps import RegionOverlaps, TractPatch, find_polygon_patches, parse_vertices

#: Named sky-map configurations for ``drp skymap register --preset``.
PRESETS = {
    "default": SkyMapConfig,
    "lsst_like": SkyMapConfig.lsst_like,
    "test": SkyMapConfig.test,
}


@dataclass
class RegisterResult:
    """What :func:`register_skymap` wrote: the sky map and the numbers of new records."""

    skymap: RingsSkyMap
    tracts: list[int]
    new_tract_records: int
    new_patch_records: int


def registered_skymap_names(repo: Repository) -> list[str]:
    """Names of the sky maps registered in a repository."""
    return sorted(repo.registry.dimension_records("skymap")["name"].to_list())


def load_skymap(repo: Repository, name: str | None = None) -> RingsSkyMap:
    """The registered sky map of that name (the only one if ``name`` is None).

    Raises
    ------
    DimensionRecordError
        If none (or, without a name, several) are registered, or the stored configuration
        does not match its hash.
    """
    names = registered_skymap_names(repo)
    if name is None:
        if not names:
            raise DimensionRecordError(
                "no sky map is registered in this repository; use `drp skymap REPO register`"
            )
        if len(names) > 1:
            raise DimensionRecordError(
                f"several sky maps are registered ({', '.join(names)}); say which one to use"
            )
        name = names[0]
    record = repo.registry.get_record("skymap", {"skymap": name})
    if record is None:
        raise DimensionRecordError(
            f"no sky map {name!r} in this repository (registered: {', '.join(names) or 'none'})"
        )
    config = SkyMapConfig.from_json(record["config"])
    if config.hash != record["hash"]:
        raise DimensionRecordError(
            f"sky map {name!r}: the stored configuration does not match its hash "
            f"({record['hash'][:12]}...); the record is corrupt"
        )
    return RingsSkyMap(config)


def register_skymap(
    repo: Repository,
    config: SkyMapConfig,
    *,
    tracts: Iterable[int] | None = None,
    for_visits: bool = True,
) -> RegisterResult:
    """Register a sky map: its ``skymap`` record, and tract and patch records.

    Parameters
    ----------
    repo
        The repository.
    config
        The sky map configuration; its name is the ``skymap`` value.
    tracts
        Tracts to write tract and patch records for.
    for_visits
        Also write records for every tract that the repository's visits overlap.

    Raises
    ------
    DimensionRecordError
        If a different sky map is already registered under the same name.
    """
    skymap = RingsSkyMap(config)
    existing = repo.registry.get_record("skymap", {"skymap": config.name})
    if existing is not None and existing["hash"] != config.hash:
        raise DimensionRecordError(
            f"a different sky map is already registered as {config.name!r} "
            f"(hash {existing['hash'][:12]}..., this one {config.hash[:12]}...); use another name"
        )
    chosen = set(tracts or ())
    if for_visits:
        chosen |= {t for t, _ in visit_overlaps(repo, skymap)}
    records = skymap.dimension_records(sorted(chosen))
    repo.insert_dimension_records("skymap", records["skymap"])
    new_tracts, new_patches = ensure_tract_records(repo, skymap, chosen)
    return RegisterResult(skymap, sorted(chosen), new_tracts, new_patches)


def ensure_tract_records(
    repo: Repository, skymap: RingsSkyMap, tracts: Iterable[int]
) -> tuple[int, int]:
    """Write the tract and patch records of these tracts that are missing; returns the counts."""
    wanted = sorted(set(tracts))
    present = set(
        repo.registry.dimension_records("tract")
        .filter(pl.col("skymap") == skymap.name)["id"]
        .to_list()
    )
    missing = [t for t in wanted if t not in present]
    if not missing:
        return 0, 0
    records = skymap.dimension_records(missing)
    new_tracts = repo.insert_dimension_records("tract", records["tract"])
    new_patches = repo.insert_dimension_records("patch", records["patch"])
    return new_tracts, new_patches


def visit_overlaps(
    repo: Repository, skymap: RingsSkyMap, visits: Iterable[tuple[str, int]] | None = None
) -> set[TractPatch]:
    """(tract, patch) pairs overlapped by the given visits (all visits with a region if None)."""
    overlaps = RegionOverlaps.from_repository(repo, skymap)
    keys = (
        set(overlaps.detector_regions) | set(overlaps.visit_regions) if visits is None else visits
    )
    found: set[TractPatch] = set()
    for instrument, visit in sorted(keys):
        found.update(overlaps.patches({"instrument": instrument, "visit": visit}))
    return found


def find_region_patches(skymap: RingsSkyMap, region: ConvexPolygon | Circle) -> list[TractPatch]:
    """(tract, patch) pairs whose outer regions overlap a polygon or circle, sorted."""
    if isinstance(region, ConvexPolygon):
        ra, dec = region.vertices_radec()
        return find_polygon_patches(skymap, [parse_vertices(list(zip(ra, dec, strict=True)))])[0]
    return sorted(
        (t, p) for t in skymap.find_tracts(region) for p in skymap.find_patches(t, region)
    )
