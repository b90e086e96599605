"""The instrument abstraction: what the repository needs to know about a camera.

An instrument names its physical filters (and the band each belongs to), describes its detectors,
and translates the headers of its files into dataId values and dimension records. Concrete
instruments (``SimCam``, ``DECam``) live beside this module and register themselves by name, so that
``drp ingest --instrument NAME`` and the repository can find them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import DrpError

_INSTRUMENTS: dict[str, type[Instrument]] = {}


@dataclass
class IngestItem:
    """One dataset that ingest will create from one or more existing files.

    Either ``source`` is a file stored as it is (copied, linked or left in place), or ``make``
    builds the object to store from the files in ``sources`` (a conversion: always copied).
    ``records`` are the dimension records (element -> list of records) the dataId needs.
    """

    dataset_type: str
    dimensions: tuple[str, ...]
    storage_class: str
    data_id: dict[str, Any]
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    source: str | None = None
    make: Callable[[], Any] | None = None
    sources: tuple[str, ...] = ()


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

    def ingest_items(self, paths: Sequence[str]) -> list[IngestItem]:
        """What ingesting these files would create; instruments that can ingest override this."""
        raise DrpError(f"instrument {self.name} does not know how to ingest files")

    @classmethod
    def matches_header(cls, header: Mapping[str, Any]) -> bool:
        """Whether a primary FITS header was written by this instrument (``INSTRUME``)."""
        return str(header.get("INSTRUME", "")).strip().lower() == cls.name.lower()

    @classmethod
    def matches_file(cls, path: str, header: Mapping[str, Any]) -> bool:
        """Whether a file (its path and primary header) belongs to this instrument; by default
        :meth:`matches_header`. Instruments with companion files whose headers say nothing
        (a PSF model, a sky model) recognize them here."""
        return cls.matches_header(header)

    def nominal_zero_point(
        self, band: str, metadata: Mapping[str, Any]
    ) -> tuple[float, float] | None:
        """A typical zero point of an exposure when its stars cannot give one.

        Returns ``(zero point, uncertainty)``: the AB magnitude of one image unit per second,
        from the exposure's ``metadata`` (airmass, gain ...), or None when the instrument has
        no such model (the default).
        """
        return None

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
