"""The single-frame calibration stage, per (instrument, visit, detector)::

    icExp + icSrc + refcat --calibrate--> calexp, src, calexpSummary

PSF fluxes are added to characterize's sources (``icSrc``, measured on the same pixels: detecting
and measuring again would give the same rows); the WCS is fitted to ``refcat`` (stars moved to
the epoch of the exposure's ``MJD-OBS``) from the raw's approximate WCS; the zero point comes
from the astrometric matches' PSF fluxes, aperture-corrected
(:mod:`stages.measure.aperture_correction`). ``src`` has ``coord_ra``/``coord_dec`` and every
flux in nJy (instrumental values kept as ``*InstFlux``), ``extendedness`` (size against the PSF
model's, :mod:`stages.measure.classification`), and ``calib_astrometry_used`` and
``calib_photometry_used`` marking the stars of the fits; ``calexpSummary`` has seeing, zero
point, depth, astrometric scatter and the numbers of stars used.

The stages before it are :mod:`stages.isr.stages` (``isr``) and
:mod:`stages.characterize.stages` (``characterize``); the default pipeline
(``stages/pipelines/drp.yaml``, subset ``singleFrame``) chains the three.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.table import Table

from repo.errors import DrpError
from repo.exposure import Exposure
from repo.instruments.base import get_instrument
from stages.characterize.stages import IC_EXP, IC_SRC
from stages.framework.base import Connection, Stage
from stages.isr.stages import VISIT_DIMS
from stages.measure.aperture_correction import (
    ApertureCorrectionConfig,
    apply_aperture_correction,
    measure_aperture_correction,
)
from stages.measure.classification import add_extendedness
from stages.measure.measurement import MeasurementConfig, measure_psf_fluxes

from .astrometry import (
    AstrometryConfig,
    AstrometryResult,
    add_sky_coordinates,
    astrometry_without_fit,
    calibrate_astrometry,
    pixel_scale_arcsec,
    reference_stars_on_image,
)
from .photometry import (
    PhotometryConfig,
    ZeroPointResult,
    calibrate_fluxes,
    calibrate_photometry,
    color_term_for,
)
from .refcat import REFCAT_SHARD_DIMENSION, empty_refcat, join_shards, mjd_to_epoch

log = logging.getLogger(__name__)

CALEXP = Connection(
    "calexp", VISIT_DIMS, "Exposure", doc="calibrated exposure: WCS, PSF, zero point"
)
SRC = Connection("src", VISIT_DIMS, "Catalog", doc="sources: coord_ra/coord_dec, fluxes in nJy")
SUMMARY = Connection(
    "calexpSummary", VISIT_DIMS, "StructuredData", doc="seeing, zero point, depth, astrometry"
)
REFCAT = Connection(
    "refcat",
    (REFCAT_SHARD_DIMENSION,),
    "Catalog",
    prerequisite=True,
    multiple=True,
    doc="astrometric/photometric reference stars, the HEALPix shards that cover the detector",
)

#: Source flags that keep a source out of the astrometric and photometric fits.
CALIBRATION_EXCLUDED_FLAGS = (
    "flag_saturated",
    "flag_crCenter",
    "flag_interpolatedCenter",
    "flag_edge",
    "flag_blended",
    "flag_psfFlux",
    "flag_bad",
)


@dataclass(frozen=True)
class CalibrateConfig:
    """Options of the calibration stage.

    Parameters
    ----------
    measurement : MeasurementConfig
        Its ``mask_planes`` are the pixels the PSF fit ignores. The sources are characterize's
        (``icSrc``), detected and measured on the same pixels: set characterize's measurement
        config to change detection or the other measurements.
    astrometry : AstrometryConfig
        Matching and WCS fit.
    aperture_correction : ApertureCorrectionConfig
        PSF fluxes tied to a large aperture and, through the PSF model, to total flux.
    photometry : PhotometryConfig
        Zero-point fit.
    keep_wcs_fallback : bool
        When the WCS fit finds too few stars, keep the input WCS (``ASTRFALL`` = true in the
        metadata, ``astrometry_fallback`` in the summary) instead of failing.
    nominal_zero_point_fallback : bool
        When the matched stars cannot give a zero point, use the instrument's nominal one
        (:meth:`repo.instruments.base.Instrument.nominal_zero_point`; ``ZPSRC`` = ``nominal``)
        if it has one, instead of failing.
    min_calibration_snr : float
        Smallest PSF-flux S/N of a source used for astrometry and photometry.
    depth_snr : float
        S/N of the point-source depth in the summary.
    extendedness_sigma, extendedness_floor : float
        A source is extended when its size exceeds the PSF model's by more than this many
        times ``2 / (S/N)`` and the floor in quadrature (:mod:`stages.measure.classification`).
    """

    measurement: MeasurementConfig = field(default_factory=MeasurementConfig)
    astrometry: AstrometryConfig = field(default_factory=AstrometryConfig)
    aperture_correction: ApertureCorrectionConfig = field(default_factory=ApertureCorrectionConfig)
    photometry: PhotometryConfig = field(default_factory=PhotometryConfig)
    keep_wcs_fallback: bool = True
    nominal_zero_point_fallback: bool = True
    min_calibration_snr: float = 10.0
    depth_snr: float = 5.0
    extendedness_sigma: float = 3.0
    extendedness_floor: float = 0.005


def calibration_sources(catalog: Table, min_snr: float) -> np.ndarray:
    """Indices of the sources fit for calibration: unflagged, finite, PSF S/N >= ``min_snr``."""
    flux = np.asarray(catalog["psfFlux"], float)
    err = np.asarray(catalog["psfFluxErr"], float)
    good = np.isfinite(flux) & np.isfinite(err) & (err > 0)
    good &= np.isfinite(np.asarray(catalog["x"], float)) & np.isfinite(np.asarray(catalog["y"]))
    good[good] &= flux[good] / err[good] >= min_snr
    for name in CALIBRATION_EXCLUDED_FLAGS:
        if name in catalog.colnames:
            good &= ~np.asarray(catalog[name], bool)
    return np.flatnonzero(good)


def photometry_matches(astrometry: AstrometryResult) -> Table:
    """The matches the zero point is fitted to: the stars of the astrometric fit, or every
    match of a kept input WCS (:func:`stages.calibrate.astrometry.astrometry_without_fit`)."""
    matches = astrometry.matches
    return matches[matches["used"]] if astrometry.n_used else matches


def point_source_depth(exposure: Exposure, snr: float) -> float:
    """Magnitude of a point source detected at ``snr`` with optimal (PSF) weighting.

    ``flux = snr * sqrt(median sky variance * n_eff)`` with ``n_eff = 1 / sum(psf^2)`` at the
    detector centre; needs the exposure's PSF and PhotoCalib.
    """
    if exposure.psf is None or exposure.photo_calib is None:
        raise DrpError("point_source_depth needs an exposure with a PSF and a PhotoCalib")
    ny, nx = exposure.shape
    kernel = exposure.psf.kernel_image((nx - 1) / 2.0, (ny - 1) / 2.0)
    n_eff = 1.0 / float(np.sum(kernel**2))
    good = exposure.mask == 0
    variance = float(np.median(exposure.variance[good] if good.any() else exposure.variance))
    flux = snr * math.sqrt(variance * n_eff)
    return exposure.photo_calib.zero_point - 2.5 * math.log10(flux)


class CalibrateStage(Stage):
    """Detection, measurement, astrometric and photometric calibration of a characterized
    exposure: the ``calexp``, its ``src`` catalog and its summary."""

    dimensions = VISIT_DIMS
    inputs = {"exposure": IC_EXP, "sources": IC_SRC, "refcat": REFCAT}
    outputs = {"calexp": CALEXP, "src": SRC, "summary": SUMMARY}
    config_class = CalibrateConfig

    def run(
        self,
        exposure: Exposure,
        sources: Table,
        refcat: Table | Mapping[Any, Table] | None,
        data_id: Any,
    ) -> dict[str, Any]:
        cfg = self.config
        if refcat is not None:
            refcat = join_shards(refcat)
        if exposure.wcs is None or exposure.psf is None:
            raise DrpError(f"calibrate {dict(data_id)}: the exposure has no WCS or no PSF")
        catalog = measure_psf_fluxes(sources, exposure, cfg.measurement)
        apcorr = measure_aperture_correction(
            catalog, exposure.psf, exposure.shape, cfg.aperture_correction
        )
        catalog = apply_aperture_correction(catalog, apcorr)
        catalog = add_extendedness(
            catalog,
            exposure.psf,
            cfg.measurement.moments_half_size,
            cfg.extendedness_sigma,
            cfg.extendedness_floor,
        )
        chosen = calibration_sources(catalog, cfg.min_calibration_snr)
        candidates = catalog[chosen]
        if "MJD-OBS" not in exposure.metadata:
            raise DrpError(f"calibrate {dict(data_id)}: the exposure has no MJD-OBS (epoch)")
        epoch = mjd_to_epoch(float(exposure.metadata["MJD-OBS"]))
        astrometry, astrometry_fallback = self._astrometry(
            candidates, refcat, exposure, epoch, data_id
        )
        zero_point, photometry_source = self._photometry(
            candidates, refcat, astrometry, exposure, data_id
        )
        exposure.wcs = astrometry.wcs
        exposure.photo_calib = zero_point.photo_calib
        src = calibrate_fluxes(add_sky_coordinates(catalog, astrometry.wcs), zero_point.photo_calib)
        used = astrometry.matches[astrometry.matches["used"]]
        photometry_rows = chosen[np.asarray(photometry_matches(astrometry)["source_index"], int)]
        for flag, rows in (
            ("calib_astrometry_used", chosen[np.asarray(used["source_index"], int)]),
            ("calib_photometry_used", photometry_rows[np.asarray(zero_point.used, bool)]),
        ):
            src[flag] = np.zeros(len(src), bool)
            src[flag][rows] = True
        summary = self._summary(exposure, astrometry, zero_point, len(src), data_id)
        summary.update(apcorr.summary())
        summary.update(
            {
                "psf_source": str(exposure.metadata.get("PSFSRC", "fit")),
                "astrometry_fallback": astrometry_fallback,
                "photometry_source": photometry_source,
                "reference_stars_on_image": None
                if refcat is None
                else reference_stars_on_image(refcat, astrometry.wcs, exposure.shape),
            }
        )
        exposure.metadata.update(
            {
                "APCORR": summary["aperture_correction_mag"],
                "APCORRN": summary["aperture_correction_stars"],
                "ZEROPT": summary["zero_point"],
                "ZEROPTER": summary["zero_point_err"],
                "ASTRRMS": summary["astrom_rms_mas"],
                "SEEING": summary["seeing_arcsec"],
                "DEPTH": summary["depth_mag"],
                "ASTRFALL": astrometry_fallback,
                "ZPSRC": photometry_source,
            }
        )
        # JSON has no NaN: a figure that could not be measured (no star) is null
        summary = {
            k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in summary.items()
        }
        return {"calexp": exposure, "src": src, "summary": summary}

    def _astrometry(
        self,
        candidates: Table,
        refcat: Table | None,
        exposure: Exposure,
        epoch: float,
        data_id: Any,
    ) -> tuple[AstrometryResult, bool]:
        """The WCS fit, or (``keep_wcs_fallback``) the input WCS when the fit finds too few
        stars; and whether it fell back."""
        cfg = self.config.astrometry
        if refcat is None:  # an image calibrated by its survey: its WCS is the one
            return astrometry_without_fit(
                candidates, empty_refcat(), exposure.wcs, exposure.shape, epoch, cfg
            ), False
        try:
            result = calibrate_astrometry(
                candidates, refcat, exposure.wcs, exposure.shape, epoch, cfg
            )
            return result, False
        except DrpError as exc:
            if not self.config.keep_wcs_fallback:
                raise DrpError(f"calibrate {dict(data_id)}: astrometry: {exc}") from exc
            log.info("calibrate %s: %s; the input WCS is kept", dict(data_id), exc)
        return astrometry_without_fit(
            candidates, refcat, exposure.wcs, exposure.shape, epoch, cfg
        ), True

    def _photometry(
        self,
        candidates: Table,
        refcat: Table | None,
        astrometry: AstrometryResult,
        exposure: Exposure,
        data_id: Any,
    ) -> tuple[ZeroPointResult, str]:
        """The zero point from the matched stars (the astrometric fit's, or all the matches
        of a kept WCS), or the instrument's nominal one when they cannot give it
        (``nominal_zero_point_fallback``); and its source, ``stars`` or ``nominal``."""
        instrument, band = str(data_id["instrument"]), str(data_id["band"])
        matches = photometry_matches(astrometry)
        if refcat is None:  # an image calibrated by its survey: its PhotoCalib is the one
            calib = exposure.photo_calib
            err = 2.5 / math.log(10) * calib.calibration_err / calib.calibration_mean
            return ZeroPointResult(
                zero_point=calib.zero_point,
                zero_point_err=err,
                n_used=0,
                n_input=0,
                rms_mag=float("nan"),
                used=np.zeros(len(matches), bool),
            ), "input"
        try:
            result = calibrate_photometry(
                candidates,
                refcat,
                np.asarray(matches["source_index"], int),
                np.asarray(matches["ref_index"], int),
                band,
                color_term_for(instrument, band, refcat),
                config=self.config.photometry,
            )
            return result, "stars"
        except DrpError as exc:
            nominal = None
            if self.config.nominal_zero_point_fallback:
                nominal = get_instrument(instrument).nominal_zero_point(band, exposure.metadata)
            if nominal is None:
                raise DrpError(f"calibrate {dict(data_id)}: photometry: {exc}") from exc
            log.info("calibrate %s: %s; the nominal zero point is used", dict(data_id), exc)
        exptime = float(exposure.metadata.get("EXPTIME", 1.0))
        per_second, err = nominal
        result = ZeroPointResult(
            zero_point=per_second + 2.5 * math.log10(exptime),
            zero_point_err=err,
            n_used=0,
            n_input=len(matches),
            rms_mag=float("nan"),
            used=np.zeros(len(matches), bool),
        )
        return result, "nominal"

    def _summary(self, exposure, astrometry, zero_point, n_sources, data_id) -> dict[str, Any]:
        ny, nx = exposure.shape
        fwhm = exposure.psf.fwhm((nx - 1) / 2.0, (ny - 1) / 2.0)
        return {
            "instrument": str(data_id["instrument"]),
            "visit": int(data_id["visit"]),
            "detector": int(data_id["detector"]),
            "band": str(data_id["band"]),
            "seeing_arcsec": float(fwhm * pixel_scale_arcsec(astrometry.wcs)),
            "psf_fwhm_pixels": float(fwhm),
            "zero_point": float(zero_point.zero_point),
            "zero_point_err": float(zero_point.zero_point_err),
            "zero_point_rms_mag": float(zero_point.rms_mag),
            "photometry_stars_used": int(zero_point.n_used),
            "depth_mag": float(point_source_depth(exposure, self.config.depth_snr)),
            "depth_snr": float(self.config.depth_snr),
            "astrom_rms_mas": float(astrometry.rms_mas),
            "astrometry_stars_matched": int(astrometry.n_matched),
            "astrometry_stars_used": int(astrometry.n_used),
            "astrometry_order": int(astrometry.order),
            "astrometry_offset_arcsec": float(astrometry.offset_arcsec),
            "psf_size_resid": exposure.metadata.get("PSFSZRES"),
            "psf_fallback": bool(exposure.metadata.get("PSFFALLB", False)),
            "n_sources": int(n_sources),
            "background_mean": float(exposure.metadata.get("BGMEAN", float("nan"))),
        }


class CalibrateImageStage(CalibrateStage):
    """Measurement of an image its survey calibrated (``image``, pipeline ``drp-image``):
    PSF and aperture fluxes, aperture correction and classification as for any calexp, with
    the image's own WCS and PhotoCalib kept (no reference catalog; ``ZPSRC`` = ``input``)."""

    inputs = {"exposure": IC_EXP, "sources": IC_SRC}

    def run(self, exposure: Exposure, sources: Table, data_id: Any) -> dict[str, Any]:
        if exposure.photo_calib is None:
            raise DrpError(f"calibrate {dict(data_id)}: the image has no PhotoCalib")
        return super().run(exposure, sources, None, data_id)
