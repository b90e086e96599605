"""The instrument abstraction: what the repository needs to know about a camera.

An instrument names its physical filters (and the band each belongs to), describes its detectors,
and translates the headers of its files into dataId values and dimension records. Concrete
instruments (``SimCam``, ``DECam``) live beside this module and register themselves by name, so that
``drp ingest --instrument NAME`` and the repository can find them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from ..errors import DrpError

_INSTRUMENTS: dict[str, type[Instrument]] = {}


class Instrument(ABC):
    """A camera: its filters, its detectors and how to read its headers.

    Subclasses set ``name`` and implement the abstract methods. Records are plain dicts whose keys
    are the fields of the dimension elements in :mod:`repo.dimensions`.
    """

    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls, "name", None):
            _INSTRUMENTS[cls.name] = cls

    def instrument_record(self) -> dict[str, Any]:
        """The record of the ``instrument`` dimension element."""
        return {"name": self.name, "class_name": f"{type(self).__module__}.{type(self).__name__}"}

    @abstractmethod
    def physical_filter_records(self) -> list[dict[str, Any]]:
        """Records of the ``physical_filter`` element: ``instrument``, ``name``, ``band``."""

    @abstractmethod
    def detector_records(self) -> list[dict[str, Any]]:
        """Records of the ``detector`` element (``instrument``, ``id``, ``name``, geometry)."""

    def band_records(self) -> list[dict[str, Any]]:
        """Records of the ``band`` element, derived from the physical filters."""
        bands = sorted({rec["band"] for rec in self.physical_filter_records()})
        return [{"name": band} for band in bands]


def get_instrument(name: str) -> Instrument:
    """Return an instance of the registered instrument called ``name``."""
    # Import the concrete instruments so that they register themselves.
    from . import known  # noqa: F401

    try:
        return _INSTRUMENTS[name]()
    except KeyError:
        known_names = ", ".join(sorted(_INSTRUMENTS)) or "none"
        raise DrpError(f"unknown instrument {name!r} (known: {known_names})") from None


def registered_instruments() -> Mapping[str, type[Instrument]]:
    """All registered instrument classes by name."""
    from . import known  # noqa: F401

    return dict(_INSTRUMENTS)
