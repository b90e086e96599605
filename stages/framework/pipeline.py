"""Pipelines: ordered sets of labelled stages with config overrides, read from YAML.

A pipeline file looks like::

    description: Single-frame processing and co-addition
    stages:
      isr:
        class: stages.isr.stages.IsrStage            # module.Class of a Stage subclass
        config:                           # overrides of the stage's config dataclass
          do_flat: true
        where: "visit.observation_type = 'science'"   # optional: this stage's own constraint
      flat:
        class: stages.isr.stages.FlatStage
        calibration: true                 # a master calibration: see StageDef
      calibrate:
        class: stages.calibrate.stages.CalibrateStage
    subsets:
      singleFrame: [isr, calibrate]
    intermediates: [postISRCCD]   # handed from stage to stage in memory, not written


``PIPELINE#subset`` runs a named subset, ``PIPELINE#isr,calibrate`` a list of labels. ``PIPELINE``
is a file path or the name of a pipeline shipped in ``stages/pipelines/`` (``drp``). Config
overrides from the command line (``label.key=value``) apply on top of the file's.

``intermediates`` names dataset types that no one reads after the stages that consume them (the
images between ISR and calibration): a run hands them from producer to consumers in memory, in
one worker, and writes them only when asked (``drp run --keep-intermediates``). One that a
(sub)pipeline produces but does not consume is written as usual. A later run whose stages read
an intermediate finds it only if the run that made it kept it; otherwise its graph reports the
input missing (run the producing stages with it, or keep the intermediates).

Loading validates everything that can be checked without a repository: that every class is a
stage, its declarations (:meth:`stages.framework.base.Stage.validate`), that a dataset type means the same
thing to every stage that uses it, that each is produced by at most one stage, that no prerequisite
is produced by the pipeline, that there is no cycle, and that every config key exists.
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from repo.registry import DatasetType

from .base import Connection, PipelineError, Stage, import_stage
from .config import ConfigError, apply_overrides, config_hash, config_json, config_to_dict

_TOP_KEYS = {"description", "stages", "subsets", "intermediates"}
_STAGE_KEYS = {"class", "config", "where", "calibration"}


@dataclass
class StageDef:
    """A stage in a pipeline: its label, class, configuration and optional where-expression.

    A ``calibration`` stage builds master calibrations: a run's where-expression does not
    select its quanta (only its own ``where`` does), and the run keeps those of its quanta that
    the selected quanta of the other stages need (see :func:`stages.framework.graph.build_graph`).
    """

    label: str
    stage_class: type[Stage]
    config: Any
    where: str = ""
    calibration: bool = False

    @property
    def config_json(self) -> str:
        """Canonical JSON of the configuration."""
        return config_json(self.config)

    @property
    def config_hash(self) -> str:
        """sha256 of the configuration's canonical JSON."""
        return config_hash(self.config)

    def make_stage(self) -> Stage:
        """An instance of the stage with this configuration."""
        return self.stage_class(self.config)


@dataclass
class Pipeline:
    """Stages in dependency order, with named subsets.

    Parameters
    ----------
    stages
        The stages; they are validated and put in dependency order (producers first).
    subsets
        Named lists of labels.
    description, source
        What the pipeline is for, and where it was read from.
    intermediates
        Dataset types handed in memory from producer to consumers and not written (unless a run
        keeps them); each must be produced by a stage of the pipeline.
    """

    stages: list[StageDef]
    subsets: dict[str, list[str]] = field(default_factory=dict)
    description: str = ""
    source: str = ""
    intermediates: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stages = _validated_order(self.stages)
        labels = set(self.labels)
        for name, members in self.subsets.items():
            unknown = [m for m in members if m not in labels]
            if unknown:
                raise PipelineError(
                    f"pipeline {self.source or ''}: subset {name!r} names unknown stage(s) "
                    f"{unknown} (stages: {', '.join(self.labels)})"
                )
        producers = self.producers()
        stray = [name for name in self.intermediates if name not in producers]
        if stray:
            raise PipelineError(
                f"pipeline {self.source or ''}: intermediates {stray} are produced by no stage "
                f"(outputs: {', '.join(sorted(producers))})"
            )

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, text: str, source: str = "<string>") -> Pipeline:
        """A pipeline from YAML text (see the module documentation for the format)."""
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise PipelineError(f"pipeline {source} is not valid YAML: {exc}") from None
        if not isinstance(data, Mapping):
            raise PipelineError(f"pipeline {source}: expected a mapping at the top level")
        unknown = set(data) - _TOP_KEYS
        if unknown:
            raise PipelineError(
                f"pipeline {source}: unknown key(s) {sorted(unknown)} (known: {sorted(_TOP_KEYS)})"
            )
        entries = data.get("stages") or {}
        if not isinstance(entries, Mapping):
            raise PipelineError(f"pipeline {source}: 'stages' must map labels to stages")
        stages = [_stage_def(source, str(label), entry) for label, entry in entries.items()]
        subsets = data.get("subsets") or {}
        if not isinstance(subsets, Mapping) or not all(
            isinstance(v, list) for v in subsets.values()
        ):
            raise PipelineError(f"pipeline {source}: 'subsets' must map names to lists of labels")
        intermediates = data.get("intermediates") or []
        if not isinstance(intermediates, list):
            raise PipelineError(
                f"pipeline {source}: 'intermediates' must be a list of dataset types"
            )
        return cls(
            stages,
            {str(k): [str(x) for x in v] for k, v in subsets.items()},
            str(data.get("description") or ""),
            source,
            [str(x) for x in intermediates],
        )

    @classmethod
    def load(cls, spec: str, overrides: Sequence[str] | Mapping[str, Any] = ()) -> Pipeline:
        """A pipeline from ``PATH_OR_NAME[#subset|#label,label]`` with config overrides.

        Parameters
        ----------
        spec
            A YAML file path, or the name of a pipeline shipped with drp (``drp``), optionally
            followed by ``#`` and a subset name or comma-separated stage labels.
        overrides
            ``label.key=value`` strings, or a mapping of ``label.key`` to values.
        """
        path, _, selection = spec.partition("#")
        text, source = _read_pipeline_text(path)
        pipeline = cls.from_yaml(text, source)
        if overrides:
            pipeline = pipeline.with_overrides(overrides)
        if selection:
            pipeline = pipeline.subset(selection)
        return pipeline

    def with_overrides(self, overrides: Sequence[str] | Mapping[str, Any]) -> Pipeline:
        """A copy with config overrides ``label.key=value`` applied (strings are converted)."""
        pairs = overrides.items() if isinstance(overrides, Mapping) else map(_split, overrides)
        by_label: dict[str, dict[str, Any]] = {}
        for key, value in pairs:
            label, _, name = key.partition(".")
            if label not in self.labels:
                raise ConfigError(
                    f"config override {key!r}: no stage labelled {label!r} "
                    f"(stages: {', '.join(self.labels)})"
                )
            if not name:
                raise ConfigError(f"config override {key!r} must be label.key=value")
            by_label.setdefault(label, {})[name] = value
        stages = [
            StageDef(
                s.label,
                s.stage_class,
                apply_overrides(s.config, by_label[s.label], where=s.label)
                if s.label in by_label
                else s.config,
                s.where,
                s.calibration,
            )
            for s in self.stages
        ]
        return Pipeline(
            stages, dict(self.subsets), self.description, self.source, list(self.intermediates)
        )

    def subset(self, selection: str) -> Pipeline:
        """The pipeline restricted to a named subset or to comma-separated labels."""
        if selection in self.subsets:
            labels = self.subsets[selection]
        else:
            labels = [s.strip() for s in selection.split(",") if s.strip()]
            unknown = [label for label in labels if label not in self.labels]
            if unknown or not labels:
                raise PipelineError(
                    f"pipeline {self.source}: {selection!r} is neither a subset "
                    f"({', '.join(self.subsets) or 'none defined'}) nor a list of stage labels "
                    f"({', '.join(self.labels) or 'none'})"
                )
        keep = set(labels)
        stages = [s for s in self.stages if s.label in keep]
        subsets = {k: v for k, v in self.subsets.items() if set(v) <= keep}
        produced = {c.dataset_type for s in stages for c in s.stage_class.outputs.values()}
        intermediates = [name for name in self.intermediates if name in produced]
        return Pipeline(
            stages, subsets, self.description, f"{self.source}#{selection}", intermediates
        )

    # -- queries ------------------------------------------------------------------------------

    @property
    def labels(self) -> list[str]:
        """Stage labels in dependency order."""
        return [s.label for s in self.stages]

    def stage(self, label: str) -> StageDef:
        """The stage with this label."""
        for s in self.stages:
            if s.label == label:
                return s
        raise PipelineError(f"no stage labelled {label!r} (stages: {', '.join(self.labels)})")

    def producers(self) -> dict[str, str]:
        """Dataset type name -> label of the stage that produces it."""
        return {
            conn.dataset_type: s.label
            for s in self.stages
            for conn in s.stage_class.outputs.values()
        }

    def dataset_types(self) -> dict[str, DatasetType]:
        """Every dataset type the pipeline reads or writes, by name."""
        return {
            conn.dataset_type: conn.as_dataset_type()
            for s in self.stages
            for conn in _connections(s.stage_class)
        }

    def describe(self) -> str:
        """A human-readable listing: stages with dimensions, connections, config; subsets."""
        lines = [f"pipeline {self.source}" + (f": {self.description}" if self.description else "")]
        if not self.stages:
            lines.append("  (no stages)")
        for s in self.stages:
            cls = s.stage_class
            lines.append(f"stage {s.label} ({cls.import_path()})")
            lines.append(f"  quantum dimensions: {', '.join(cls.quantum_group().required)}")
            if s.where:
                lines.append(f"  where: {s.where}")
            if s.calibration:
                lines.append("  calibration: built for what the selected quanta need")
            for kind, conns in (("inputs", cls.inputs), ("outputs", cls.outputs)):
                lines.append(f"  {kind}:")
                lines.extend(f"    {name}: {c.describe()}" for name, c in conns.items())
            config = config_to_dict(s.config)
            lines.append(f"  config (sha256 {s.config_hash[:12]}):" + ("" if config else " {}"))
            lines.extend(f"    {key}: {value!r}" for key, value in config.items())
        if self.subsets:
            lines.append("subsets:")
            lines.extend(f"  {k}: {', '.join(v)}" for k, v in self.subsets.items())
        if self.intermediates:
            lines.append(
                f"intermediates (in memory, written with --keep-intermediates): "
                f"{', '.join(self.intermediates)}"
            )
        return "\n".join(lines)


def packaged_pipelines() -> list[str]:
    """Names of the pipelines shipped in ``stages/pipelines``."""
    folder = importlib.resources.files("stages") / "pipelines"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_pipeline_text(path: str) -> tuple[str, str]:
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return f.read(), path
    if path in packaged_pipelines():
        resource = importlib.resources.files("stages") / "pipelines" / f"{path}.yaml"
        return resource.read_text(encoding="utf-8"), path
    raise PipelineError(
        f"pipeline {path!r} is neither a file nor a packaged pipeline "
        f"({', '.join(packaged_pipelines()) or 'none'})"
    )


def _split(pair: str) -> tuple[str, str]:
    key, sep, value = pair.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"config override {pair!r} must be label.key=value")
    return key.strip(), value.strip()


def _stage_def(source: str, label: str, entry: Any) -> StageDef:
    where = f"pipeline {source}: stage {label!r}"
    if not label.isidentifier():
        raise PipelineError(f"{where}: a label must be letters, digits and '_'")
    if isinstance(entry, str):
        entry = {"class": entry}
    if not isinstance(entry, Mapping) or "class" not in entry:
        raise PipelineError(f"{where}: expected a mapping with a 'class' key")
    unknown = set(entry) - _STAGE_KEYS
    if unknown:
        raise PipelineError(
            f"{where}: unknown key(s) {sorted(unknown)} (known: {', '.join(sorted(_STAGE_KEYS))})"
        )
    try:
        cls = import_stage(str(entry["class"]))
    except PipelineError as exc:
        raise PipelineError(f"{where}: {exc}") from None
    overrides = entry.get("config") or {}
    if not isinstance(overrides, Mapping):
        raise PipelineError(f"{where}: 'config' must be a mapping of keys to values")
    config = apply_overrides(cls.config_class(), overrides, where=label)
    calibration = entry.get("calibration", False)
    if not isinstance(calibration, bool):
        raise PipelineError(f"{where}: 'calibration' must be true or false")
    return StageDef(label, cls, config, str(entry.get("where") or ""), calibration)


def _connections(cls: type[Stage]) -> Iterable[Connection]:
    yield from cls.inputs.values()
    yield from cls.outputs.values()


def _validated_order(stages: list[StageDef]) -> list[StageDef]:
    """Validate stages and their relations; return them producers first (stable)."""
    seen: set[str] = set()
    for s in stages:
        if s.label in seen:
            raise PipelineError(f"two stages are labelled {s.label!r}")
        seen.add(s.label)
        s.stage_class.validate(s.label)
    definitions: dict[str, tuple[DatasetType, str]] = {}
    producers: dict[str, str] = {}
    for s in stages:
        for conn in _connections(s.stage_class):
            dataset_type = conn.as_dataset_type()
            known = definitions.setdefault(conn.dataset_type, (dataset_type, s.label))
            if known[0] != dataset_type:
                raise PipelineError(
                    f"dataset type {conn.dataset_type!r} is {known[0]} in stage {known[1]!r} "
                    f"but {dataset_type} in stage {s.label!r}"
                )
        for conn in s.stage_class.outputs.values():
            if conn.dataset_type in producers:
                raise PipelineError(
                    f"dataset type {conn.dataset_type!r} is produced by both stage "
                    f"{producers[conn.dataset_type]!r} and stage {s.label!r}"
                )
            producers[conn.dataset_type] = s.label
    upstream: dict[str, set[str]] = {s.label: set() for s in stages}
    for s in stages:
        for name, conn in s.stage_class.inputs.items():
            producer = producers.get(conn.dataset_type)
            if producer is None:
                continue
            if conn.prerequisite:
                raise PipelineError(
                    f"stage {s.label!r}: prerequisite input {name!r} ({conn.dataset_type}) is "
                    f"produced by stage {producer!r}; make it a regular input"
                )
            upstream[s.label].add(producer)
    order: list[StageDef] = []
    done: set[str] = set()
    pending = list(stages)
    while pending:
        ready = [s for s in pending if upstream[s.label] <= done]
        if not ready:
            cycle = ", ".join(s.label for s in pending)
            raise PipelineError(f"the stages {cycle} depend on each other in a cycle")
        for s in ready:
            order.append(s)
            done.add(s.label)
        pending = [s for s in pending if s.label not in done]
    return order
