"""Which quanta of a graph run: the outputs handed over in memory, and the quanta whose outputs
exist already with the same configuration (skipped), as :func:`stages.framework.graph.build_graph`
decides them after building the quanta."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from repo.repository import Repository

from .base import PipelineError
from .pipeline import Pipeline
from .quanta import Quantum


class ConfigChangedError(PipelineError):
    """Outputs in the output run were made with another configuration of their stage."""


_ABSENT = object()

#: Why a quantum runs, weakest first: it does not; only to make again an in-memory input that a
#: quantum which runs needs (its outputs are the same as before: nothing downstream changes);
#: its outputs are missing, its configuration changed, or an input changed.
SKIP, REGENERATE, RUN = 0, 1, 2


def mark_statuses(
    repo: Repository,
    quanta: Mapping[str, Quantum],
    pipeline: Pipeline,
    output_run: str,
    *,
    clobber: bool = False,
    keep_intermediates: bool = False,
) -> None:
    """Set each quantum's ``transient`` outputs and its ``status`` (``run`` or ``skip``).

    Transient (handed in memory, not written): an output of one of the pipeline's intermediate
    dataset types that some quantum of this graph reads, unless ``keep_intermediates`` or it
    exists in the output run already (a kept one is written again, never left stale).

    Skipped: a quantum whose written outputs all exist in the output run with the same config
    hash, unless ``clobber``. Then, until nothing changes: a quantum downstream of one that
    runs runs too (its inputs change); and the producer of an in-memory input of a quantum that
    runs is run again to make it, without that counting as a change for its other readers
    (same inputs and config give the same outputs).

    Raises
    ------
    ConfigChangedError
        Outputs exist in the output run with another config, and not ``clobber``.
    """
    current = repo.registry.current_datasets(refresh=True)
    mine = current.filter(pl.col("run") == output_run).select("dataset_id", "config_hash")
    existing = dict(mine.iter_rows())
    _mark_transient(quanta, pipeline, existing, keep_intermediates)
    hashes = {s.label: s.config_hash for s in pipeline.stages}
    changed: dict[str, list[Quantum]] = {}
    state: dict[str, int] = {}
    for quantum in quanta.values():
        found = [existing.get(r.id, _ABSENT) for r in quantum.outputs.values()]
        if any(h is not _ABSENT and h != hashes[quantum.label] for h in found):
            changed.setdefault(quantum.label, []).append(quantum)
        complete = all(
            existing.get(r.id, _ABSENT) == hashes[quantum.label]
            for name, r in quantum.outputs.items()
            if name not in quantum.transient
        )
        state[quantum.id] = SKIP if complete and not clobber else RUN
    if changed and not clobber:
        label, examples = next(iter(changed.items()))
        raise ConfigChangedError(
            f"stage {label!r}: {len(examples)} quanta (e.g. {examples[0].short_id}) have "
            f"outputs in run {output_run!r} made with another configuration (this one "
            f"is sha256 {hashes[label][:12]}...); use --clobber to redo them with the new "
            "configuration, or write to a new output run"
        )
    _propagate(quanta, state)
    for quantum in quanta.values():
        quantum.status = "skip" if state[quantum.id] == SKIP else "run"


def _mark_transient(
    quanta: Mapping[str, Quantum],
    pipeline: Pipeline,
    existing: Mapping[str, str],
    keep_intermediates: bool,
) -> None:
    if keep_intermediates or not pipeline.intermediates:
        return
    intermediates = set(pipeline.intermediates)
    consumed = {r.id for q in quanta.values() for refs in q.inputs.values() for r in refs}
    for quantum in quanta.values():
        quantum.transient = frozenset(
            name
            for name, ref in quantum.outputs.items()
            if ref.dataset_type.name in intermediates
            and ref.id in consumed
            and ref.id not in existing
        )


def _propagate(quanta: Mapping[str, Quantum], state: dict[str, int]) -> None:
    """Run downstream of what runs, and regenerate the producers of missing in-memory inputs,
    until nothing changes (both only raise a state, so this ends)."""
    producer_of = {
        ref.id: quantum.id
        for quantum in quanta.values()
        for name, ref in quantum.outputs.items()
        if name in quantum.transient
    }
    ordered = list(quanta.values())  # dependency order: upstream first
    changing = True
    while changing:
        changing = False
        for quantum in ordered:
            if state[quantum.id] < RUN and any(state[u] == RUN for u in quantum.upstream):
                state[quantum.id], changing = RUN, True
        for quantum in reversed(ordered):
            if state[quantum.id] == SKIP:
                continue
            for refs in quantum.inputs.values():
                for ref in refs:
                    producer = producer_of.get(ref.id)
                    if producer is not None and state[producer] == SKIP:
                        state[producer], changing = REGENERATE, True
