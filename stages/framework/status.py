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


def mark_transient(
    quanta: Mapping[str, Quantum], pipeline: Pipeline, keep_intermediates: bool
) -> None:
    """Mark the outputs handed in memory: of an intermediate dataset type (unless kept), and
    read by some quantum of this graph (one nobody here reads is written as usual)."""
    if keep_intermediates or not pipeline.intermediates:
        return
    intermediates = set(pipeline.intermediates)
    consumed = {r.id for q in quanta.values() for refs in q.inputs.values() for r in refs}
    for quantum in quanta.values():
        quantum.transient = frozenset(
            name
            for name, ref in quantum.outputs.items()
            if ref.dataset_type.name in intermediates and ref.id in consumed
        )


def mark_done(
    repo: Repository,
    quanta: Mapping[str, Quantum],
    pipeline: Pipeline,
    output_run: str,
    clobber: bool,
) -> None:
    """Mark quanta whose outputs exist with the same config 'skip'; refuse changed configs.

    An output handed in memory (:meth:`mark_transient`) is not looked for; instead, until
    nothing changes: a quantum downstream of one that runs runs too (its inputs change),
    and the producer of an in-memory input of a quantum that runs runs too, unless that
    input exists (kept by an earlier run).
    """
    current = repo.registry.current_datasets(refresh=True)
    mine = current.filter(pl.col("run") == output_run).select("dataset_id", "config_hash")
    existing = dict(mine.iter_rows())
    hashes = {s.label: s.config_hash for s in pipeline.stages}
    changed: dict[str, list[Quantum]] = {}
    for quantum in quanta.values():
        found = [existing.get(r.id, _ABSENT) for r in quantum.outputs.values()]
        if any(h is not _ABSENT and h != hashes[quantum.label] for h in found):
            changed.setdefault(quantum.label, []).append(quantum)
        complete = all(
            existing.get(r.id, _ABSENT) == hashes[quantum.label]
            for name, r in quantum.outputs.items()
            if name not in quantum.transient
        )
        quantum.status = "skip" if complete and not clobber else "run"
    if changed and not clobber:
        label, quanta = next(iter(changed.items()))
        raise ConfigChangedError(
            f"stage {label!r}: {len(quanta)} quanta (e.g. {quanta[0].short_id}) have "
            f"outputs in run {output_run!r} made with another configuration (this one "
            f"is sha256 {hashes[label][:12]}...); use --clobber to redo them with the new "
            "configuration, or write to a new output run"
        )
    producer_of = {
        ref.id: quantum
        for quantum in quanta.values()
        for name, ref in quantum.outputs.items()
        if name in quantum.transient
    }
    ordered = list(quanta.values())  # dependency order: upstream first
    changing = True
    while changing:
        changing = False
        for quantum in ordered:
            if quantum.status == "skip" and any(
                quanta[u].status == "run" for u in quantum.upstream
            ):
                quantum.status, changing = "run", True
        for quantum in reversed(ordered):
            if quantum.status != "run":
                continue
            for refs in quantum.inputs.values():
                for ref in refs:
                    producer = producer_of.get(ref.id)
                    if (
                        producer is not None
                        and producer.status == "skip"
                        and existing.get(ref.id) != hashes[producer.label]
                    ):
                        producer.status, changing = "run", True
