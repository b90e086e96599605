"""The stage abstraction: connections, configs, and the Stage base class.

A stage is one kind of unit of work in a pipeline. It declares

* its quantum dimensions (``("instrument", "visit", "detector")``, ``("skymap", "tract", "patch",
  "band")`` ...): one quantum, one call of :meth:`Stage.run`, per dataId over them;
* its inputs and outputs as :class:`Connection` objects (dataset type, dimensions, storage class,
  single or ``multiple``, ``prerequisite`` inputs such as calibrations and reference catalogs);
* its configuration, a dataclass (:attr:`Stage.config_class`) whose values can be overridden from
  the pipeline YAML and from the command line (``--config isr.do_flat=false``).

:meth:`Stage.run` is a plain function of loaded inputs that returns the output objects by
connection name; the framework (:mod:`stages.framework.runner`) reads, writes and records, so stage code never
touches paths::

    @dataclass(frozen=True)
    class ScaleConfig:
        factor: float = 2.0

    class Scale(Stage):
        dimensions = ("instrument", "visit", "detector")
        inputs = {"image": Connection("postIsr", ("instrument", "visit", "detector"), "Image")}
        outputs = {"scaled": Connection("scaled", ("instrument", "visit", "detector"), "Image")}
        config_class = ScaleConfig

        def run(self, image):
            return {"scaled": image * self.config.factor}

An input with ``multiple=True`` arrives as a dict ``{DataId: object}`` ordered by dataId. ``run``
may also accept the keyword ``data_id`` (the quantum's dataId) and ``skymap`` (the registered
:class:`~repo.skymap.RingsSkyMap`, for quanta with sky-map dimensions); they are passed only when
``run`` names them.

Configs (:mod:`stages.framework.config`) are hashed over their canonical JSON; every output records the hash,
which is how a re-run knows whether existing outputs were made with the same configuration.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import inspect
import keyword
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any, ClassVar

from repo.dimensions import DimensionGroup, sort_dimensions
from repo.errors import DatasetTypeError, DrpError, InvalidDataIdError
from repo.registry import DatasetType, check_name
from repo.storage_classes import get_storage_class

from .config import ConfigError, NoConfig

#: Keyword arguments of ``run`` that the framework supplies itself; no connection may use them.
RESERVED_ARGUMENTS = ("data_id", "skymap", "self")

#: Dimensions that come from the sky map and can be related to visits through their regions.
SKYMAP_DIMENSIONS = ("skymap", "tract", "patch")


class PipelineError(DrpError, ValueError):
    """A stage or pipeline definition is invalid, or a pipeline cannot run as asked."""


@dataclass(frozen=True)
class Connection:
    """An input or output of a stage.

    Parameters
    ----------
    dataset_type
        Name of the dataset type read or written.
    dimensions
        Dimensions of the dataset type.
    storage_class
        Storage class of the dataset type (``Exposure``, ``Image``, ``Catalog`` ...).
    multiple
        The input is a collection of datasets (all those matching the quantum), delivered as a
        dict ``{DataId: object}`` ordered by dataId. Outputs are always single.
    prerequisite
        The input is not made by the pipeline (a calibration, a reference catalog): it is
        looked up in the input collections by dataId overlap and must exist before the graph is
        built.
    doc
        What the dataset is, for ``drp pipeline show``.
    """

    dataset_type: str
    dimensions: tuple[str, ...]
    storage_class: str
    multiple: bool = False
    prerequisite: bool = False
    doc: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "dimensions", sort_dimensions(self.dimensions))

    @cached_property
    def group(self) -> DimensionGroup:
        """Required and implied dimensions of the dataset type."""
        return DimensionGroup.from_names(self.dimensions)

    def as_dataset_type(self) -> DatasetType:
        """The dataset type this connection reads or writes (one shared object)."""
        return self._dataset_type

    @cached_property
    def _dataset_type(self) -> DatasetType:
        return DatasetType(self.dataset_type, self.dimensions, self.storage_class)

    def describe(self) -> str:
        """One line: ``name(dims) [StorageClass] multiple prerequisite``."""
        flags = [f for f in ("multiple", "prerequisite") if getattr(self, f)]
        dims = ", ".join(self.dimensions)
        return " ".join([f"{self.dataset_type}({dims}) [{self.storage_class}]", *flags])


class Stage(abc.ABC):
    """Base class of pipeline stages; see the module documentation.

    Parameters
    ----------
    config
        An instance of :attr:`config_class`; its defaults if omitted.
    """

    #: Quantum dimensions: one quantum per dataId over these.
    dimensions: ClassVar[tuple[str, ...]] = ()
    #: Inputs by argument name of :meth:`run`.
    inputs: ClassVar[Mapping[str, Connection]] = {}
    #: Outputs by key of the dict :meth:`run` returns.
    outputs: ClassVar[Mapping[str, Connection]] = {}
    #: Dataclass of the configuration.
    config_class: ClassVar[type] = NoConfig

    def __init__(self, config: Any = None):
        self.config = self.config_class() if config is None else config
        if not isinstance(self.config, self.config_class):
            raise ConfigError(
                f"{type(self).__name__} needs a {self.config_class.__name__} config, "
                f"got {type(self.config).__name__}"
            )

    @abc.abstractmethod
    def run(self, **inputs: Any) -> dict[str, Any]:
        """Compute the outputs (by connection name) from the loaded inputs."""

    # -- description ------------------------------------------------------------------------

    @classmethod
    def import_path(cls) -> str:
        """``module.Class``, the name a pipeline YAML file and a worker process use."""
        return f"{cls.__module__}.{cls.__qualname__}"

    @classmethod
    def quantum_group(cls) -> DimensionGroup:
        """Required and implied quantum dimensions."""
        return _dimension_group(tuple(cls.dimensions))

    @classmethod
    def run_arguments(cls) -> set[str] | None:
        """Names ``run`` accepts, or None if it takes ``**kwargs``."""
        params = inspect.signature(cls.run).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return None
        return {p.name for p in params if p.name != "self"}

    # -- validation ---------------------------------------------------------------------------

    @classmethod
    def validate(cls, label: str) -> None:
        """Check the declarations of this stage; raise :class:`PipelineError` naming the fault.

        Checks that dimensions, dataset type names and storage classes exist; that outputs are
        single and have exactly the quantum's required dimensions; that a single (not
        ``multiple``) input has no dimension outside the quantum; that every required quantum
        dimension can be derived from some input (directly, implied, or through sky regions);
        and that ``run`` accepts every input.
        """
        where = f"stage {label!r} ({cls.import_path()})"
        try:
            group = cls.quantum_group()
        except InvalidDataIdError as exc:
            raise PipelineError(f"{where}: quantum dimensions: {exc}") from None
        if not cls.outputs:
            raise PipelineError(f"{where} declares no outputs")
        if not dataclasses.is_dataclass(cls.config_class):
            raise PipelineError(f"{where}: config_class must be a dataclass")
        for kind, connections in (("input", cls.inputs), ("output", cls.outputs)):
            for name, conn in connections.items():
                _check_connection(where, kind, name, conn)
        for name, conn in cls.outputs.items():
            if conn.multiple or conn.prerequisite:
                raise PipelineError(f"{where}: output {name!r} cannot be multiple or prerequisite")
            if set(conn.group.required) != set(group.required):
                raise PipelineError(
                    f"{where}: output {name!r} ({conn.describe()}) must have the quantum's "
                    f"dimensions ({', '.join(group.required)})"
                )
        overlap = set(cls.inputs) & set(cls.outputs)
        if overlap:
            raise PipelineError(f"{where}: {sorted(overlap)} are both inputs and outputs")
        for name, conn in cls.inputs.items():
            outside = [d for d in conn.group.required if d not in group.names]
            if outside and not conn.multiple:
                raise PipelineError(
                    f"{where}: input {name!r} ({conn.describe()}) has dimension(s) "
                    f"{', '.join(outside)} outside the quantum dimensions "
                    f"({', '.join(group.names)}); declare it multiple=True"
                )
        regular = [c for c in cls.inputs.values() if not c.prerequisite]
        if regular:
            for dim in group.required:
                if not any(_derivable(dim, c.group) for c in regular):
                    raise PipelineError(
                        f"{where}: quantum dimension {dim!r} cannot be derived from any input "
                        f"({', '.join(c.dataset_type for c in regular)})"
                    )
        accepted = cls.run_arguments()
        if accepted is not None:
            missing = [n for n in cls.inputs if n not in accepted]
            if missing:
                raise PipelineError(f"{where}: run() does not accept input(s) {missing}")


@cache
def _dimension_group(dimensions: tuple[str, ...]) -> DimensionGroup:
    return DimensionGroup.from_names(dimensions)


def _derivable(dimension: str, group: DimensionGroup) -> bool:
    """Whether a dataset with dimensions ``group`` determines the value of ``dimension``."""
    if dimension in group.names:
        return True
    return dimension in SKYMAP_DIMENSIONS and "visit" in group.names


def _check_connection(where: str, kind: str, name: str, conn: Connection) -> None:
    if not isinstance(conn, Connection):
        raise PipelineError(f"{where}: {kind} {name!r} is not a Connection")
    if not name.isidentifier() or keyword.iskeyword(name) or name in RESERVED_ARGUMENTS:
        raise PipelineError(
            f"{where}: {kind} name {name!r} must be a Python identifier other than "
            f"{', '.join(RESERVED_ARGUMENTS)}"
        )
    try:
        check_name(conn.dataset_type, "dataset type name")
        get_storage_class(conn.storage_class)
        conn.group  # noqa: B018 - validates the dimensions
    except (DatasetTypeError, InvalidDataIdError) as exc:
        raise PipelineError(f"{where}: {kind} {name!r}: {exc}") from None
    if kind == "output" and conn.prerequisite:
        raise PipelineError(f"{where}: output {name!r} cannot be a prerequisite")


def import_stage(path: str) -> type[Stage]:
    """The Stage subclass named by ``module.Class`` (as written in a pipeline YAML file)."""
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        raise PipelineError(f"stage class {path!r} must be given as module.Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PipelineError(f"cannot import stage module {module_name!r} ({exc})") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise PipelineError(f"{path!r} is not a Stage class (module {module_name} has no such)")
    return cls
