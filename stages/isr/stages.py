"""Pipeline stages of instrument signature removal: the master calibrations (bias, dark, flat)
built from raw frames, and ISR of science raws with them (``isr``: raw + bias + dark + flat ->
postISRCCD, :func:`stages.isr.correction.run_isr`; the defects are the hot pixels of the dark
and the dead pixels of the flat).

Thin shells around :mod:`stages.isr.calibration_products`; in the default pipeline
(``stages/pipelines/drp.yaml``) each is selected to its raws by a ``where:`` on
``visit.observation_type``, and the masters are written in the output run, where the ISR
stage (``isr``, below) finds them as regular inputs::

    raw (bias)  --bias (instrument, detector)------------------------------> bias
    raw (dark)  --dark (instrument, detector; + bias)----------------------> dark
    raw (flat)  --flatCombine (instrument, physical_filter, detector)-------> flatUnnormalized
    flatUnnormalized (every detector)
                --flatNormalization (instrument, physical_filter)-----------> flatNormalization
    flatUnnormalized + flatNormalization
                --flat (instrument, physical_filter, detector)--------------> flat

Flats are normalized over the **focal plane** per band (the convention of the simulator's zero
point, and what keeps the vignetting between detectors in the flat): a stage's outputs must have
its quantum's dimensions, so the per-filter step (``flatNormalization``) emits only the
per-detector scales (a small JSON dataset), and the per-detector ``flat`` stage applies them.
The result is exactly :func:`stages.isr.calibration_products.normalize_flats`.

The masters are stored as ``Fits`` datasets in the layout of
:meth:`CalibrationProduct.to_hdulist` (IMAGE, VARIANCE, DEFECTS). Every stage takes the
overscan and linearity options of ISR (``isr`` in its config), which must agree with those of
the ISR stage itself.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from astropy.io import fits

from repo.errors import DrpError
from repo.instruments.simcam import SimCam
from stages.framework.base import Connection, Stage

from .calibration_products import (
    CalibrationProduct,
    combine_bias,
    combine_dark,
    combine_defects,
    combine_flat,
    normalize_flats,
)
from .correction import IsrConfig, run_isr

DETECTOR_DIMS = ("instrument", "detector")
VISIT_DIMS = ("instrument", "visit", "detector")
FILTER_DETECTOR_DIMS = ("instrument", "physical_filter", "detector")
FILTER_DIMS = ("instrument", "physical_filter")

RAWS = Connection(
    "raw", VISIT_DIMS, "Fits", multiple=True, doc="raw calibration frames of one detector"
)
CAMERA = Connection(
    "camera", ("instrument",), "StructuredData", prerequisite=True, doc="the camera's configuration"
)
BIAS = Connection("bias", DETECTOR_DIMS, "Fits", doc="master bias (electrons)")
DARK = Connection("dark", DETECTOR_DIMS, "Fits", doc="master dark (electrons per second)")
FLAT_UNNORMALIZED = Connection(
    "flatUnnormalized",
    FILTER_DETECTOR_DIMS,
    "Fits",
    doc="combined flat of one detector, in units of its frames' median (FLATLVL)",
)
FLAT_NORMALIZATION = Connection(
    "flatNormalization",
    FILTER_DIMS,
    "StructuredData",
    doc="focal-plane normalization of a band's flats: FLATSCAL of each detector",
)
FLAT = Connection(
    "flat", FILTER_DETECTOR_DIMS, "Fits", doc="master flat, median 1 over the focal plane"
)


def camera_from_dataset(data: Any) -> SimCam:
    """The SimCam of a ``camera`` dataset (``{"config": {...}}``, written by ``drp demo``)."""
    try:
        return SimCam.from_json(json.dumps(data["config"]))
    except (KeyError, TypeError) as exc:
        raise DrpError(f"camera dataset is not a SimCam configuration ({exc})") from None


def _frames(raws: dict[Any, fits.HDUList]) -> list[fits.HDUList]:
    return list(raws.values())


def _product(hdulist: fits.HDUList) -> CalibrationProduct:
    return CalibrationProduct.from_hdulist(hdulist)


@dataclass(frozen=True)
class BiasConfig:
    """Options of the bias stage: the overscan options of ISR."""

    isr: IsrConfig = field(default_factory=IsrConfig)


class BiasStage(Stage):
    """Master bias per detector from its raw bias frames (clipped mean, electrons)."""

    dimensions = DETECTOR_DIMS
    inputs = {"raws": RAWS}
    outputs = {"bias": BIAS}
    config_class = BiasConfig

    def run(self, raws: dict[Any, fits.HDUList]) -> dict[str, Any]:
        return {"bias": combine_bias(_frames(raws), config=self.config.isr).to_hdulist()}


@dataclass(frozen=True)
class DarkConfig:
    """Options of the dark stage.

    Parameters
    ----------
    isr : IsrConfig
        Overscan and linearity options (those of ISR).
    hot_threshold : float
        Dark current (e-/s) above which a pixel is a defect.
    """

    isr: IsrConfig = field(default_factory=IsrConfig)
    hot_threshold: float = 0.5


class DarkStage(Stage):
    """Master dark (e-/s) per detector from its raw dark frames, with the hot pixels."""

    dimensions = DETECTOR_DIMS
    inputs = {"raws": RAWS, "bias": BIAS, "camera": CAMERA}
    outputs = {"dark": DARK}
    config_class = DarkConfig

    def run(self, raws: dict[Any, fits.HDUList], bias: fits.HDUList, camera: Any) -> dict:
        dark = combine_dark(
            _frames(raws),
            _product(bias),
            camera_from_dataset(camera),
            self.config.isr,
            self.config.hot_threshold,
        )
        return {"dark": dark.to_hdulist()}


@dataclass(frozen=True)
class FlatCombineConfig:
    """Options of the flat combination.

    Parameters
    ----------
    isr : IsrConfig
        Overscan and linearity options (those of ISR).
    dead_threshold : float
        Response below this fraction of the row neighbours' makes a dead pixel.
    """

    isr: IsrConfig = field(default_factory=IsrConfig)
    dead_threshold: float = 0.5


class FlatCombineStage(Stage):
    """A detector's flat frames of one filter combined, not yet normalized (``FLATLVL`` kept)."""

    dimensions = FILTER_DETECTOR_DIMS
    inputs = {"raws": RAWS, "bias": BIAS, "dark": DARK, "camera": CAMERA}
    outputs = {"flat": FLAT_UNNORMALIZED}
    config_class = FlatCombineConfig

    def run(
        self,
        raws: dict[Any, fits.HDUList],
        bias: fits.HDUList,
        dark: fits.HDUList,
        camera: Any,
    ) -> dict[str, Any]:
        flat = combine_flat(
            _frames(raws),
            _product(bias),
            _product(dark),
            camera_from_dataset(camera),
            self.config.isr,
            normalize=False,
            dead_threshold=self.config.dead_threshold,
        )
        return {"flat": flat.to_hdulist()}


class FlatNormalizationStage(Stage):
    """The focal-plane normalization of one filter's flats: each detector's ``FLATSCAL``.

    Output: ``{"physical_filter": ..., "detectors": {"<id>": FLATSCAL}}``, the factor each
    detector's unnormalized flat is divided by (:func:`normalize_flats`).
    """

    dimensions = FILTER_DIMS
    inputs = {"flats": dataclasses.replace(FLAT_UNNORMALIZED, multiple=True)}
    outputs = {"normalization": FLAT_NORMALIZATION}

    def run(self, flats: dict[Any, fits.HDUList], data_id: Any) -> dict[str, Any]:
        products = [_product(h) for h in flats.values()]
        normalized = normalize_flats(products)
        scales = {
            str(key["detector"]): float(product.metadata["FLATSCAL"])
            for key, product in zip(flats, normalized, strict=True)
        }
        return {
            "normalization": {
                "physical_filter": data_id["physical_filter"],
                "detectors": scales,
            }
        }


class FlatStage(Stage):
    """A detector's master flat: its combined flat divided by its focal-plane ``FLATSCAL``."""

    dimensions = FILTER_DETECTOR_DIMS
    inputs = {"flat": FLAT_UNNORMALIZED, "normalization": FLAT_NORMALIZATION}
    outputs = {"flat_out": FLAT}

    def run(self, flat: fits.HDUList, normalization: dict, data_id: Any) -> dict[str, Any]:
        return {"flat_out": apply_flat_scale(_product(flat), normalization, data_id["detector"])}


def apply_flat_scale(flat: CalibrationProduct, normalization: dict, detector: int) -> fits.HDUList:
    """A combined, unnormalized flat divided by its detector's ``FLATSCAL`` (FITS form).

    Raises
    ------
    repo.errors.DrpError
        The normalization has no entry for ``detector``, or the flat is normalized already.
    """
    scales = normalization.get("detectors", {})
    if str(detector) not in scales:
        raise DrpError(
            f"flat normalization of {normalization.get('physical_filter')!r} has no detector "
            f"{detector} (has {sorted(scales)})"
        )
    if flat.metadata.get("FLATSCAL", 1.0) != 1.0 or flat.metadata.get("FPNORM"):
        raise DrpError(f"flat of detector {detector} is normalized already")
    scale = float(scales[str(detector)])
    product = CalibrationProduct(
        image=flat.image / scale,
        variance=flat.variance / scale**2,
        defects=flat.defects,
        metadata={**flat.metadata, "FLATSCAL": scale, "FPNORM": True},
    )
    return product.to_hdulist()


POST_ISR = Connection("postISRCCD", VISIT_DIMS, "Exposure", doc="ISR-corrected image (electrons)")


@dataclass(frozen=True)
class IsrStageConfig:
    """Options of the ISR stage (see :class:`stages.isr.correction.IsrConfig`)."""

    isr: IsrConfig = field(default_factory=IsrConfig)


class IsrStage(Stage):
    """Instrument signature removal of one science raw with the run's master calibrations."""

    dimensions = VISIT_DIMS
    inputs = {
        "raw": Connection("raw", VISIT_DIMS, "Fits", doc="raw science exposure"),
        "bias": BIAS,
        "dark": DARK,
        "flat": FLAT,
        "camera": CAMERA,
    }
    outputs = {"exposure": POST_ISR}
    config_class = IsrStageConfig

    def run(self, raw, bias, dark, flat, camera) -> dict[str, Any]:
        bias_p, dark_p, flat_p = _product(bias), _product(dark), _product(flat)
        exposure = run_isr(
            raw,
            camera_from_dataset(camera),
            bias_p,
            dark_p,
            flat_p,
            combine_defects(dark_p, flat_p),
            self.config.isr,
        )
        return {"exposure": exposure}
