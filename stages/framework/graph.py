"""Building the quantum graph: the units of work of a pipeline run and their dependencies.

From the registry's contents, the input collections, an output run and a where-expression, each
stage (in dependency order) gets one :class:`Quantum` per dataId over its quantum dimensions:

1. Every regular input connection contributes the dataIds of its datasets — those found in the
   search path (the output run, then the input collections) or, for a dataset type an earlier
   stage produces, that stage's predicted outputs — projected onto the quantum dimensions. A
   quantum dimension the dataset lacks but can reach through the sky (tract and patch, for a
   dataset with a visit) comes from the overlaps of its detector regions with the registered sky
   map (:mod:`stages.framework.overlaps`). The projections of all inputs are joined on their shared keys.
2. The where-expression (and the stage's own, from the pipeline) constrains the datasets and the
   quantum dataIds. It is evaluated on everything that is known about each (dimensions, implied
   dimensions, record fields such as ``visit.exposure_time``, and tracts and patches overlapped);
   a term about something that cannot be known there (``detector`` for a per-patch quantum) is
   left undecided, and only a row for which the expression is definitely false is dropped.
   Calibration stages (master biases, darks, flats) are selected by their own expression only:
   their quanta that a selected quantum of another stage needs are kept (a flat normalized over
   the whole focal plane, whatever detectors were asked for), the others dropped.
3. Each quantum collects its inputs (``multiple`` ones ordered by dataId), looks up its
   prerequisites (which must exist: a missing one is an error naming it), and predicts its
   outputs, whose ids and paths follow from (dataset type, output run, dataId) alone.
4. Outputs of the pipeline's ``intermediates`` that a quantum of the graph reads are marked
   transient: handed in memory, not written (unless ``keep_intermediates``, or they exist).
5. A quantum whose written outputs all exist in the output run with the same config hash is
   marked ``skip``, unless ``clobber`` is asked for, a quantum it depends on has to run, or a
   quantum that reads one of its in-memory outputs has to run (then it is run again only to
   make that input, which changes nothing for its other readers). Outputs made with another config
   are refused (:class:`~stages.framework.status.ConfigChangedError`) unless ``clobber``
   (steps 4 and 5: :mod:`stages.framework.status`).

Every problem the graph can find (unknown dataset types, definitions that disagree with the
registry, a missing prerequisite or input, a where that selects nothing, changed configs) is raised
here, before any work starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from repo.dimensions import UNIVERSE, DataId, DimensionGroup
from repo.errors import CollectionError, DatasetNotFoundError, DatasetTypeError
from repo.registry import (
    DATASET_ID_NAMESPACE,
    DatasetRef,
    DatasetType,
    check_collection_name,
)
from repo.repository import Repository
from repo.skymap import RingsSkyMap

from .base import SKYMAP_DIMENSIONS, Connection, PipelineError
from .overlaps import RegionOverlaps
from .pipeline import Pipeline, StageDef
from .quanta import QUANTUM_ID_NAMESPACE, Quantum, QuantumGraph, fast_uuid5
from .skymap_setup import load_skymap
from .status import mark_statuses
from .where_filter import WhereFilter

_MAX_LISTED = 5
#: The HEALPix dimension of sharded prerequisites (reference catalogs) and its order.
HEALPIX_DIMENSION, HEALPIX_ORDER = "healpix7", 7


class NothingSelectedError(PipelineError):
    """The inputs and where-expression select no quanta at all."""


@dataclass
class _Candidate:
    """A dataset an input connection may read: an existing ref, or a predicted output."""

    ref: DatasetRef
    producer: str | None  # quantum id of the producing quantum in this graph
    values: dict[str, Any]  # the dataId as a plain dict (fast lookups)
    order: tuple  # sort key: the values of the required dimensions


def _candidate(
    ref: DatasetRef, producer: str | None = None, values: dict[str, Any] | None = None
) -> _Candidate:
    values = dict(ref.data_id.items()) if values is None else values
    order = _sort_key(values[k] for k in ref.dataset_type.group.required)
    return _Candidate(ref, producer, values, order)


class _Builder:
    def __init__(
        self,
        repo: Repository,
        pipeline: Pipeline,
        output_run: str,
        inputs: Sequence[str],
        where: str,
        binds: Mapping[str, Any] | None,
        skymap_name: str | None,
    ):
        self.repo = repo
        self.pipeline = pipeline
        self.output_run = check_collection_name(output_run)
        self.inputs = list(inputs)
        self.where = where
        self.binds = binds
        self.skymap_name = skymap_name
        self._skymap: RingsSkyMap | None = None
        self._overlaps: RegionOverlaps | None = None
        self._regions: RegionOverlaps | None = None
        self.search = self._search_path()
        self.producers = pipeline.producers()
        self.available: dict[str, list[_Candidate]] = {}
        self.quanta: dict[str, Quantum] = {}
        self._implied: dict[tuple, dict[str, Any]] = {}

    # -- setup ----------------------------------------------------------------------------

    def _search_path(self) -> list[str]:
        if not self.inputs:
            raise CollectionError("give at least one input collection (--input)")
        self.repo.registry.flatten(self.inputs)  # unknown collections are an error
        try:
            output = self.repo.registry.get_collection(self.output_run)
        except CollectionError:
            return list(self.inputs)
        if output.type != "RUN":
            raise CollectionError(
                f"output {self.output_run!r} is a {output.type} collection; outputs go into a RUN"
            )
        return [self.output_run, *[c for c in self.inputs if c != self.output_run]]

    def skymap(self) -> RingsSkyMap:
        if self._skymap is None:
            self._skymap = load_skymap(self.repo, self.skymap_name)
        return self._skymap

    def overlaps(self) -> RegionOverlaps:
        if self._overlaps is None:
            self._overlaps = RegionOverlaps.from_repository(self.repo, self.skymap())
        return self._overlaps

    def regions(self) -> RegionOverlaps:
        """The visits' and detectors' regions, for relations that need no sky map (HEALPix
        shards); the sky map's overlaps when they are loaded already."""
        if self._overlaps is not None:
            return self._overlaps
        if self._regions is None:
            self._regions = RegionOverlaps.from_repository(self.repo, None)
        return self._regions

    def _overlaps_and_name(self) -> tuple[RegionOverlaps, str]:
        return self.overlaps(), self.skymap().name

    def check_dataset_types(self) -> None:
        """Existing inputs must be registered; every definition must agree with the registry."""
        for name, dataset_type in self.pipeline.dataset_types().items():
            try:
                registered = self.repo.registry.get_dataset_type(name)
            except DatasetTypeError:
                if name in self.producers:
                    continue
                users = [
                    f"{s.label}.{conn_name}"
                    for s in self.pipeline.stages
                    for conn_name, c in s.stage_class.inputs.items()
                    if c.dataset_type == name
                ]
                raise DatasetTypeError(
                    f"dataset type {name!r} (input {', '.join(users)}) is not registered in "
                    "this repository and no stage of the pipeline produces it"
                ) from None
            if registered != dataset_type:
                raise DatasetTypeError(
                    f"the pipeline uses {dataset_type} but the repository has {registered}"
                )

    # -- datasets -------------------------------------------------------------------------

    def existing(self, dataset_type: str, where: WhereFilter | None) -> list[_Candidate]:
        refs = self.repo.query_datasets(dataset_type, collections=self.search)
        return self.filtered([_candidate(r) for r in refs], where)

    def candidates(self, conn: Connection, where: WhereFilter) -> list[_Candidate]:
        if conn.dataset_type in self.producers:
            return self.filtered(self.available.get(conn.dataset_type, []), where)
        return self.existing(conn.dataset_type, where)

    def filtered(self, found: list[_Candidate], where: WhereFilter | None) -> list[_Candidate]:
        if not where:
            return found
        if where.spatial:
            self.prepare_overlaps(found)
        return [c for c in found if where.accepts(c.values)]

    def prepare_overlaps(self, found: Iterable[_Candidate]) -> None:
        """Compute the sky overlaps of the visits of datasets that have no tract, in bulk."""
        visits = {
            (c.values["instrument"], c.values["visit"])
            for c in found
            if "visit" in c.values and c.values.get("tract") is None
        }
        if visits:
            self.overlaps().prepare(visits)

    def index_input(
        self, conn: Connection, quantum: DimensionGroup, candidates: list[_Candidate]
    ) -> tuple[list[str], dict[tuple, list[_Candidate]]]:
        """The quantum keys an input determines, and its candidates indexed by their values.

        A dataset with a visit but no tract or patch is indexed under every tract and patch its
        footprint overlaps, when the quantum has those dimensions.
        """
        group = conn.group
        direct = [n for n in quantum.names if n in group.names]
        spatial = (
            [n for n in SKYMAP_DIMENSIONS if n in quantum.names and n not in group.names]
            if "visit" in group.names
            else []
        )
        index: dict[tuple, list[_Candidate]] = {}
        if not spatial:
            for cand in candidates:
                values = cand.values
                index.setdefault(tuple(values.get(n) for n in direct), []).append(cand)
            return direct, index
        overlaps, name = self.overlaps(), self.skymap().name
        overlaps.prepare((c.values["instrument"], c.values["visit"]) for c in candidates)
        picks = [SKYMAP_DIMENSIONS.index(n) for n in spatial]
        for cand in candidates:
            values = cand.values
            base = tuple([values.get(n) for n in direct])
            pairs = overlaps.patches(values)
            if picks == [0, 1, 2]:  # the usual case: every (tract, patch), each once
                keys = [base + (name, tract, patch) for tract, patch in pairs]
            else:
                keys = list(
                    dict.fromkeys(
                        base + tuple((name, tract, patch)[i] for i in picks)
                        for tract, patch in pairs
                    )
                )
            for key in keys:
                index.setdefault(key, []).append(cand)
        return direct + spatial, index

    # -- stages ---------------------------------------------------------------------------

    def build_stage(self, stage: StageDef) -> None:
        cls = stage.stage_class
        quantum_group = cls.quantum_group()
        texts = [stage.where] if stage.calibration else [self.where, stage.where]
        where = WhereFilter(texts, self.binds, self.repo, self._overlaps_and_name)
        regular = {n: c for n, c in cls.inputs.items() if not c.prerequisite}
        prerequisites = {n: c for n, c in cls.inputs.items() if c.prerequisite}
        # Per input connection: its keys and an index from key values to candidates.
        indexes = {
            name: self.index_input(conn, quantum_group, self.candidates(conn, where))
            for name, conn in regular.items()
        }
        if regular:
            rows, row_keys = _join([indexes[n] for n in regular])
            self.check_missing_inputs(stage, regular, indexes, rows, row_keys)
        else:
            ids = self.repo.query_data_ids(quantum_group.required)
            row_keys = list(quantum_group.names)
            rows = {tuple(d.get(k) for k in row_keys) for d in ids}
        data_ids = self.quantum_data_ids(quantum_group, rows, row_keys)
        if where:
            if where.spatial and "visit" in quantum_group.names:
                self.overlaps().prepare((d["instrument"], d["visit"]) for d in data_ids)
            data_ids = [d for d in data_ids if where.accepts(d)]
        prereq_index = {
            n: self.prerequisite_index(c, quantum_group) for n, c in prerequisites.items()
        }
        missing: dict[str, list[DataId]] = {}
        for values in data_ids:
            self.add_quantum(stage, quantum_group, values, indexes, prereq_index, missing)
        if missing:
            raise _missing_prerequisites(stage, prerequisites, missing, self.search)

    def keep_needed_calibrations(self) -> None:
        """Drop the quanta of calibration stages that no quantum of another stage needs
        (directly or through other calibrations); a pipeline of calibrations only keeps all."""
        calibration = {s.label for s in self.pipeline.stages if s.calibration}
        wanted = [q for q in self.quanta.values() if q.label not in calibration]
        if not calibration or not wanted:
            return
        needed: set[str] = set()
        stack = [u for q in wanted for u in q.upstream]
        while stack:
            qid = stack.pop()
            if qid not in needed:
                needed.add(qid)
                stack.extend(self.quanta[qid].upstream)
        self.quanta = {
            qid: q for qid, q in self.quanta.items() if q.label not in calibration or qid in needed
        }

    def check_missing_inputs(
        self,
        stage: StageDef,
        regular: Mapping[str, Connection],
        indexes: Mapping[str, tuple[list[str], dict[tuple, list[_Candidate]]]],
        rows: set[tuple],
        row_keys: list[str],
    ) -> None:
        """Name an input that must already exist but is missing for datasets of another input.

        Missing means absent from the collections, not left out by the run's where-expression
        (a run of one visit selects the raws of that visit, not those of every flat it finds).
        """
        existing = [n for n, c in regular.items() if c.dataset_type not in self.producers]
        unselected: WhereFilter | None = None
        for name, conn in regular.items():
            if conn.multiple:
                continue
            keys, index = indexes[name]
            positions = [row_keys.index(k) for k in keys]
            covered = {tuple(row[i] for i in positions) for row in rows}
            uncovered = sorted(set(index) - covered, key=_sort_key)
            if not uncovered:
                continue
            for other in existing:
                if other == name:
                    continue
                other_keys, other_index = indexes[other]
                shared = [k for k in keys if k in other_keys]
                have = {tuple(v[other_keys.index(k)] for k in shared) for v in other_index}
                lacking = [
                    v for v in uncovered if tuple(v[keys.index(k)] for k in shared) not in have
                ]
                if lacking and self.where:
                    if unselected is None:
                        unselected = WhereFilter(
                            [stage.where], self.binds, self.repo, self._overlaps_and_name
                        )
                    quantum = stage.stage_class.quantum_group()
                    candidates = self.candidates(regular[other], unselected)
                    all_keys, all_index = self.index_input(regular[other], quantum, candidates)
                    have = {tuple(v[all_keys.index(k)] for k in shared) for v in all_index}
                    lacking = [
                        v for v in lacking if tuple(v[keys.index(k)] for k in shared) not in have
                    ]
                if lacking:
                    shown = [k for k in shared if k in regular[other].group.required] or shared
                    examples = "; ".join(
                        str({k: v[keys.index(k)] for k in shown}) for v in lacking[:_MAX_LISTED]
                    )
                    raise DatasetNotFoundError(
                        f"stage {stage.label!r}: input {other!r} "
                        f"({regular[other].dataset_type}) is missing in collections "
                        f"{self.search} for {len(lacking)} dataId(s) that input {name!r} "
                        f"({conn.dataset_type}) has: {examples}"
                    )

    def quantum_data_ids(
        self, group: DimensionGroup, rows: Iterable[tuple], row_keys: list[str]
    ) -> list[dict[str, Any]]:
        """Quantum dataIds (as dicts) from joined rows, implied dimensions filled from the
        records, in the order of their required values."""
        positions = [(k, i) for i, k in enumerate(row_keys) if k in group.names]
        implying = [n for n in group.required if UNIVERSE[n].implies]
        result = []
        for row in rows:
            values = {k: row[i] for k, i in positions}
            for name in implying:
                if any(values.get(n) is None for n in UNIVERSE[name].implies):
                    values.update(self.implied(name, values))
            result.append(values)
        return sorted(result, key=lambda v: _sort_key(v[k] for k in group.required))

    def implied(self, element: str, values: Mapping[str, Any]) -> dict[str, Any]:
        keys = (*UNIVERSE[element].requires, element)
        key = (element, *(values[k] for k in keys))
        cached = self._implied.get(key)
        if cached is None:
            record = self.repo.registry.get_record(element, values)
            if record is None:
                raise DatasetNotFoundError(
                    f"no {element} record for {dict((k, values[k]) for k in keys)}"
                )
            cached = self._implied[key] = {n: record[n] for n in UNIVERSE[element].implies}
        return cached

    def prerequisite_index(
        self, conn: Connection, quantum: DimensionGroup
    ) -> tuple[list[str], list[str], dict[tuple, list[DatasetRef]]]:
        """Shared direct keys, sky keys, and prerequisite refs indexed by the direct keys."""
        direct = [n for n in conn.group.names if n in quantum.names]
        sky = (
            [
                n
                for n in ("tract", "patch", HEALPIX_DIMENSION)
                if n in conn.group.names and n not in quantum.names
            ]
            if "visit" in quantum.names
            else []
        )
        index: dict[tuple, list[_Candidate]] = {}
        for cand in self.existing(conn.dataset_type, None):
            index.setdefault(tuple(cand.values.get(n) for n in direct), []).append(cand)
        return direct, sky, index

    def add_quantum(
        self,
        stage: StageDef,
        group: DimensionGroup,
        values: dict[str, Any],
        indexes: Mapping[str, tuple[list[str], dict[tuple, list[_Candidate]]]],
        prereq_index: Mapping[str, tuple[list[str], list[str], dict[tuple, list[_Candidate]]]],
        missing: dict[str, list[DataId]],
    ) -> None:
        """Add the quantum of a stage for one dataId (this runs once per quantum: keep it lean)."""
        cls = stage.stage_class
        data_id = DataId.from_ordered(group.names, [values[k] for k in group.names])
        canonical = ",".join([f"{k}={values[k]}" for k in group.required])  # DataId.canonical()
        quantum_id = fast_uuid5(
            QUANTUM_ID_NAMESPACE, f"{stage.label}/{self.output_run}/{canonical}"
        )
        inputs: dict[str, list[DatasetRef]] = {}
        upstream: set[str] = set()
        for name, (keys, index) in indexes.items():
            found = index.get(tuple([values[k] for k in keys]), ())
            if len(found) > 1:  # an index holds each candidate once under each key
                if not cls.inputs[name].multiple:
                    raise PipelineError(
                        f"stage {stage.label!r}: {len(found)} {cls.inputs[name].dataset_type} "
                        f"datasets match quantum {values}; declare input {name!r} multiple=True"
                    )
                found = sorted(found, key=_by_order)
            inputs[name] = [c.ref for c in found]
            for c in found:
                if c.producer is not None:
                    upstream.add(c.producer)
        for name, (direct, sky, index) in prereq_index.items():
            cands = index.get(tuple(values.get(n) for n in direct), [])
            covered = True
            if sky == [HEALPIX_DIMENSION]:
                # the shards of the pixels it overlaps: a pixel without stars has none
                pixels = set(self.regions().healpix_pixels(values, HEALPIX_ORDER))
                cands = [c for c in cands if c.values.get(HEALPIX_DIMENSION) in pixels]
            elif sky:
                # every tract (or patch) the quantum overlaps must have its dataset
                wanted = {tp if "patch" in sky else tp[0] for tp in self.overlaps().patches(values)}
                skymap = self.skymap().name
                cands = [
                    c
                    for c in cands
                    if c.values.get("skymap") == skymap and _sky_key(c.values, sky) in wanted
                ]
                covered = {_sky_key(c.values, sky) for c in cands} == wanted
            conn = cls.inputs[name]
            if not cands or not covered or (len(cands) > 1 and not conn.multiple):
                missing.setdefault(name, []).append(data_id)
                continue
            inputs[name] = [c.ref for c in sorted(cands, key=_by_order)]
        outputs = {}
        order = tuple([values[k] for k in group.required])
        for name, conn in cls.outputs.items():
            dataset_type = conn.as_dataset_type()
            names = dataset_type.group.names
            if names == group.names:
                out_values, out_id = values, data_id
            else:
                out_values = {k: values[k] for k in names}
                out_id = _ordered(names, out_values)
            # dataset_id_for(), on the required values, which are the quantum's
            dataset_id = fast_uuid5(
                DATASET_ID_NAMESPACE, f"{dataset_type.name}/{self.output_run}/{canonical}"
            )
            ref = DatasetRef(dataset_type, out_id, self.output_run, dataset_id)
            outputs[name] = ref
            self.available.setdefault(conn.dataset_type, []).append(
                _Candidate(ref, quantum_id, out_values, order)
            )
        self.quanta[quantum_id] = Quantum(
            quantum_id, stage.label, data_id, inputs, outputs, upstream, "run", group.required
        )

    # -- statuses -------------------------------------------------------------------------


def _by_order(candidate: _Candidate) -> tuple:
    return candidate.order


def _sky_key(values: Mapping[str, Any], sky: Sequence[str]) -> Any:
    """(tract, patch) of a dataset with a patch, or its tract."""
    return (values.get("tract"), values.get("patch")) if "patch" in sky else values.get("tract")


def _ordered(names: Sequence[str], values: Mapping[str, Any]) -> DataId:
    """A DataId of ``names`` (already in canonical order) without re-sorting them."""
    return DataId.from_ordered(names, [values.get(n) for n in names])


def _sort_key(values: Iterable[Any]) -> tuple:
    """Sort key of the values of required dimensions (never None; one type per dimension)."""
    return tuple(values)


def _join(
    parts: list[tuple[list[str], dict[tuple, list[_Candidate]]]],
) -> tuple[set[tuple], list[str]]:
    """Natural join of the key sets of several inputs; returns rows and their key names."""
    ordered = sorted(parts, key=lambda p: -len(p[0]))
    keys = list(ordered[0][0])
    rows = set(ordered[0][1])
    for part_keys, index in ordered[1:]:
        shared = [k for k in part_keys if k in keys]
        new = [k for k in part_keys if k not in keys]
        by_shared: dict[tuple, list[tuple]] = {}
        for value in index:
            by_shared.setdefault(tuple(value[part_keys.index(k)] for k in shared), []).append(
                tuple(value[part_keys.index(k)] for k in new)
            )
        positions = [keys.index(k) for k in shared]
        joined = set()
        for row in rows:
            for extra in by_shared.get(tuple(row[i] for i in positions), ()):
                joined.add(row + extra)
        rows, keys = joined, keys + new
    return rows, keys


def _missing_prerequisites(
    stage: StageDef,
    prerequisites: Mapping[str, Connection],
    missing: Mapping[str, list[DataId]],
    search: list[str],
) -> DatasetNotFoundError:
    name, data_ids = next(iter(missing.items()))
    conn = prerequisites[name]
    example = data_ids[0]
    wanted = {k: example[k] for k in conn.group.names if k in example}
    required = stage.stage_class.quantum_group().required
    return DatasetNotFoundError(
        f"stage {stage.label!r}: prerequisite {name!r} ({conn.dataset_type}, dimensions "
        f"{', '.join(conn.dimensions) or 'none'}) is missing or ambiguous for {len(data_ids)} "
        f"quanta, e.g. {wanted} (quantum {dict(example.subset(required))}), in collections "
        f"{search}"
    )


def build_graph(
    repo: Repository,
    pipeline: Pipeline,
    *,
    output_run: str,
    inputs: Sequence[str],
    where: str = "",
    binds: Mapping[str, Any] | None = None,
    clobber: bool = False,
    skymap: str | None = None,
    keep_intermediates: bool = False,
) -> QuantumGraph:
    """Build the quantum graph of a pipeline run; see the module documentation.

    Parameters
    ----------
    repo
        The repository.
    pipeline
        The stages to run.
    output_run
        RUN collection the outputs go into; its existing datasets are inputs too.
    inputs
        Collections searched (after the output run) for existing inputs and prerequisites.
    where
        Where-expression constraining dataIds, e.g. ``"tract = 0 AND band IN ('g', 'r')"``.
    binds
        Values of ``:name`` placeholders in ``where``.
    clobber
        Redo quanta whose outputs exist already (and accept a changed config).
    skymap
        Name of the registered sky map (needed only if there are several).
    keep_intermediates
        Write the pipeline's intermediate dataset types too, instead of handing them from
        stage to stage in memory.

    Raises
    ------
    NothingSelectedError
        If no quanta at all are selected.
    stages.framework.status.ConfigChangedError
        If outputs exist with another config and ``clobber`` is false.
    DatasetNotFoundError, DatasetTypeError, PipelineError, WhereSyntaxError
        For the problems listed in the module documentation.
    """
    if not pipeline.stages:
        raise PipelineError(f"pipeline {pipeline.source} has no stages to run")
    builder = _Builder(repo, pipeline, output_run, inputs, where, binds, skymap)
    WhereFilter([where, *(s.where for s in pipeline.stages)], binds, repo, None)  # syntax first
    builder.check_dataset_types()
    for stage in pipeline.stages:
        builder.build_stage(stage)
    builder.keep_needed_calibrations()
    if not builder.quanta:
        what = f"the where-expression {where!r} selects" if where else "the inputs select"
        raise NothingSelectedError(
            f"nothing to do: {what} no data for pipeline {pipeline.source} "
            f"(stages {', '.join(pipeline.labels)}) in collections {builder.search}"
        )
    mark_statuses(
        repo,
        builder.quanta,
        pipeline,
        builder.output_run,
        clobber=clobber,
        keep_intermediates=keep_intermediates,
    )
    return QuantumGraph(
        pipeline,
        builder.output_run,
        builder.search,
        builder.quanta,
        builder._skymap,
        where,
    )


def dataset_types_to_register(graph: QuantumGraph) -> list[DatasetType]:
    """The output dataset types of the graph's pipeline."""
    return [
        conn.as_dataset_type()
        for s in graph.pipeline.stages
        for conn in s.stage_class.outputs.values()
    ]


def used_tracts(graph: QuantumGraph) -> set[int]:
    """Tracts that appear in the dataIds of the graph's quanta and outputs."""
    tracts = {q.data_id.get("tract") for q in graph.quanta.values()}
    tracts.discard(None)
    return tracts  # type: ignore[return-value]


__all__ = [
    "NothingSelectedError",
    "build_graph",
    "dataset_types_to_register",
    "used_tracts",
]
