"""Single-visit processing stages: ISR, characterization (cosmic rays, background, PSF) and
calibration (detection, measurement, astrometry, photometry), per (instrument, visit, detector).

Thin shells around the science modules; the default pipeline (``stages/pipelines/drp.yaml``,
subset ``singleFrame``) chains them after the calibration stages of :mod:`stages.isr.stages`::

    raw + bias + dark + flat --isr--> postISRCCD
    postISRCCD --characterize--> icExp, calexpBackground, icSrc, icPsfStars
    icExp + icSrc + refcat --calibrate--> calexp, src, calexpSummary

* ``isr``: :func:`stages.isr.correction.run_isr` with the masters of the same run; the defects are the hot
  pixels of the dark and the dead pixels of the flat.
* ``characterize``: cosmic rays found and repaired (:func:`stages.characterize.cosmic_rays.reject_cosmic_rays`,
  whose lower bound of the PSF width is the sharpest optical PSF of the detector, the
  atmosphere only broadening it); the background (:func:`stages.characterize.background.estimate_background`:
  sources found 5 sigma above sep's first pass masked, then the sigma-clipped mean of each box,
  which unlike sep's mode estimate is not low on a Poisson sky) subtracted and stored as a
  table; a first detection and
  measurement without PSF, then the PSF (:func:`stages.characterize.psf_determination.determine_psf`, optical
  part from the camera model) attached to the exposure. ``icSrc`` is the first-pass catalog
  (``calib_psf_candidate``, ``calib_psf_used``, ``calib_psf_reserved`` mark the PSF stars) and
  ``icPsfStars`` the PSF stars with their model residuals (reserved stars validate the model).
* ``calibrate``: PSF fluxes added to characterize's sources (``icSrc``, measured on the same
  pixels: detecting and measuring again would give the same rows); the WCS fitted to ``refcat`` (stars moved
  to the epoch of the exposure's ``MJD-OBS``) from the raw's approximate WCS; the zero point from
  the astrometric matches' PSF fluxes, aperture-corrected
  (:mod:`stages.measure.aperture_correction`); ``src`` with ``coord_ra``/``coord_dec`` and every flux in
  nJy (instrumental values kept as ``*InstFlux``), ``extendedness`` (size against the PSF
  model's, :mod:`stages.measure.classification`), ``calib_astrometry_used`` and
  ``calib_photometry_used`` marking the stars of the fits; ``calexpSummary`` with seeing, zero point,
  depth, astrometric scatter and the numbers of stars used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table

from repo.errors import DrpError
from repo.exposure import Exposure
from repo.psf import FWHM_PER_SIGMA, GaussianPsf
from stages.characterize.background import (
    background_to_table,
    estimate_background,
    subtract_background,
)
from stages.characterize.cosmic_rays import CosmicRayConfig, reject_cosmic_rays
from stages.characterize.psf_determination import (
    PsfDeterminationConfig,
    determine_psf,
    optical_field,
)
from stages.framework.base import Connection, Stage
from stages.isr.calibration_products import CalibrationProduct, combine_defects
from stages.isr.correction import IsrConfig, run_isr
from stages.isr.stages import BIAS, CAMERA, DARK, FLAT, VISIT_DIMS, camera_from_dataset
from stages.measure.aperture_correction import (
    ApertureCorrectionConfig,
    apply_aperture_correction,
    measure_aperture_correction,
)
from stages.measure.classification import add_extendedness
from stages.measure.measurement import MeasurementConfig, detect_and_measure, measure_psf_fluxes

from .astrometry import (
    AstrometryConfig,
    add_sky_coordinates,
    calibrate_astrometry,
    pixel_scale_arcsec,
)
from .photometry import PhotometryConfig, calibrate_fluxes, calibrate_photometry
from .refcat import mjd_to_epoch

POST_ISR = Connection("postISRCCD", VISIT_DIMS, "Exposure", doc="ISR-corrected image (electrons)")
IC_EXP = Connection(
    "icExp", VISIT_DIMS, "Exposure", doc="CR-repaired, background-subtracted image with its PSF"
)
BACKGROUND = Connection(
    "calexpBackground", VISIT_DIMS, "Catalog", doc="sky background model (mesh nodes)"
)
IC_SRC = Connection("icSrc", VISIT_DIMS, "Catalog", doc="first-pass sources (no PSF fluxes)")
PSF_STARS = Connection(
    "icPsfStars", VISIT_DIMS, "Catalog", doc="PSF stars, reserved flags and model residuals"
)
CALEXP = Connection(
    "calexp", VISIT_DIMS, "Exposure", doc="calibrated exposure: WCS, PSF, zero point"
)
SRC = Connection("src", VISIT_DIMS, "Catalog", doc="sources: coord_ra/coord_dec, fluxes in nJy")
SUMMARY = Connection(
    "calexpSummary", VISIT_DIMS, "StructuredData", doc="seeing, zero point, depth, astrometry"
)
REFCAT = Connection("refcat", (), "Catalog", prerequisite=True, doc="astrometric/photometric refs")

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

#: :func:`stages.characterize.cosmic_rays.estimate_psf_sigma` returns 0.9 x the stars' adaptive sigma.
CORE_FACTOR = 0.9


def _product(hdulist: fits.HDUList) -> CalibrationProduct:
    return CalibrationProduct.from_hdulist(hdulist)


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


@dataclass(frozen=True)
class CharacterizeConfig:
    """Options of the characterization stage.

    Parameters
    ----------
    cosmic_rays : CosmicRayConfig
        Cosmic-ray detection.
    background_mesh, background_filter : int
        Background box size (pixels) and median filter size (boxes).
    background_source_sigma : float or None
        Threshold of the source mask of the background's second pass (None: one pass).
    background_estimator : str
        Box value of the background: ``"mode"`` (sep's) or ``"clipped_mean"`` (see
        :func:`stages.characterize.background.clipped_mean_background`).
    measurement : MeasurementConfig
        The first detection and measurement pass (PSF star candidates).
    psf : PsfDeterminationConfig
        PSF star selection and fitting.
    gaussian_fallback : bool
        When the detector has too few PSF stars for the fit (a small detector in a sparse
        field), use a circular Gaussian of the core width measured by the cosmic-ray stage
        (``PSFFALLB`` = true in the metadata, and an empty ``icPsfStars``) instead of failing.
    """

    cosmic_rays: CosmicRayConfig = field(default_factory=CosmicRayConfig)
    background_mesh: int = 64
    background_filter: int = 3
    background_source_sigma: float | None = 5.0
    background_estimator: str = "clipped_mean"
    measurement: MeasurementConfig = field(default_factory=MeasurementConfig)
    psf: PsfDeterminationConfig = field(default_factory=PsfDeterminationConfig)
    gaussian_fallback: bool = True


def min_optical_psf_sigma(camera: Any, detector: int, band: str, shape: tuple[int, int]) -> float:
    """The smallest Gaussian sigma (pixels) of the camera's optical PSF over a detector.

    The optical PSF is sampled on a 5 x 5 grid of the detector; the atmosphere only broadens
    it, so this is a lower bound of the PSF width anywhere on the detector.
    """
    ny, nx = shape
    xs, ys = np.meshgrid(np.linspace(0, nx - 1, 5), np.linspace(0, ny - 1, 5))
    fwhm = np.asarray(camera.optical_psf_params(detector, xs.ravel(), ys.ravel(), band)[0])
    return float(np.min(fwhm)) / FWHM_PER_SIGMA


class CharacterizeStage(Stage):
    """Cosmic rays, background and PSF of a post-ISR exposure."""

    dimensions = VISIT_DIMS
    inputs = {"exposure": POST_ISR, "camera": CAMERA}
    outputs = {
        "ic_exp": IC_EXP,
        "background": BACKGROUND,
        "ic_src": IC_SRC,
        "psf_stars": PSF_STARS,
    }
    config_class = CharacterizeConfig

    def run(self, exposure: Exposure, camera: Any, data_id: Any) -> dict[str, Any]:
        cfg = self.config
        cam = camera_from_dataset(camera)
        detector, band = int(data_id["detector"]), str(data_id["band"])
        min_sigma = min_optical_psf_sigma(cam, detector, band, exposure.shape)
        cr_mask, cr_sigma = reject_cosmic_rays(exposure, min_sigma, cfg.cosmic_rays)
        model, level = estimate_background(
            exposure,
            cfg.background_mesh,
            cfg.background_filter,
            source_sigma=cfg.background_source_sigma,
            estimator=cfg.background_estimator,
        )
        subtract_background(exposure, level)
        catalog = detect_and_measure(exposure, cfg.measurement)
        optical = optical_field(cam, detector, band, exposure.shape)
        exposure.metadata.update({"NCRPIX": int(cr_mask.sum()), "CRSIGMA": float(cr_sigma)})
        stars = self._attach_psf(exposure, catalog, optical, cr_sigma)
        for flag, rows in psf_star_flags(stars).items():
            catalog[flag] = np.zeros(len(catalog), bool)
            catalog[flag][rows] = True
        return {
            "ic_exp": exposure,
            "background": background_to_table(model),
            "ic_src": catalog,
            "psf_stars": stars,
        }

    def _attach_psf(
        self, exposure: Exposure, catalog: Table, optical: Any, cr_sigma: float
    ) -> Table:
        """Fit the PSF (or fall back to a Gaussian), attach it, return the PSF-star table."""
        try:
            result = determine_psf(exposure, catalog, optical, self.config.psf)
        except DrpError as exc:
            if not self.config.gaussian_fallback:
                raise
            exposure.psf = GaussianPsf(cr_sigma / CORE_FACTOR)
            exposure.metadata.update({"PSFFALLB": True, "PSFFWHM": exposure.psf.fwhm(0, 0)})
            stars = Table({name: np.zeros(0) for name in ("x", "y", "snr", "sizeResid")})
            stars["sourceIndex"] = np.zeros(0, int)
            stars["reserved"] = stars["used"] = stars["outlier"] = np.zeros(0, bool)
            stars.meta["fallback"] = str(exc)
            return stars
        exposure.psf = result.psf
        summary = result.summary()
        exposure.metadata.update(
            {
                "PSFFALLB": False,
                "PSFBETA": float(summary["beta"]),
                "PSFNSTAR": int(summary["n_used"]),
                "PSFNRES": int(summary["n_reserved"]),
                "PSFSZRES": float(summary["psf_size_resid"]),
                "PSFFWHM": float(summary["fwhm_pixels"]),
            }
        )
        stars = result.stars
        stars.meta.update({k: v for k, v in summary.items() if np.isscalar(v)})
        return stars


def psf_star_flags(stars: Table) -> dict[str, np.ndarray]:
    """Catalog rows (``sourceIndex``) of the PSF stars: ``calib_psf_candidate`` (selected and
    measured), ``calib_psf_used`` (in the final fit) and ``calib_psf_reserved`` (kept out to
    validate it), as in LSST's source catalogs."""
    index = np.asarray(stars["sourceIndex"], int)
    return {
        "calib_psf_candidate": index,
        "calib_psf_used": index[np.asarray(stars["used"], bool)],
        "calib_psf_reserved": index[np.asarray(stars["reserved"], bool)],
    }


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
        self, exposure: Exposure, sources: Table, refcat: Table, data_id: Any
    ) -> dict[str, Any]:
        cfg = self.config
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
        astrometry = calibrate_astrometry(
            candidates, refcat, exposure.wcs, exposure.shape, epoch, cfg.astrometry
        )
        used = astrometry.matches[astrometry.matches["used"]]
        zero_point = calibrate_photometry(
            candidates,
            refcat,
            np.asarray(used["source_index"]),
            np.asarray(used["ref_index"]),
            str(data_id["band"]),
            config=cfg.photometry,
        )
        exposure.wcs = astrometry.wcs
        exposure.photo_calib = zero_point.photo_calib
        src = calibrate_fluxes(add_sky_coordinates(catalog, astrometry.wcs), zero_point.photo_calib)
        astrometry_rows = chosen[np.asarray(used["source_index"], int)]
        for flag, rows in (
            ("calib_astrometry_used", astrometry_rows),
            ("calib_photometry_used", astrometry_rows[np.asarray(zero_point.used, bool)]),
        ):
            src[flag] = np.zeros(len(src), bool)
            src[flag][rows] = True
        summary = self._summary(exposure, astrometry, zero_point, len(src), data_id)
        summary.update(apcorr.summary())
        exposure.metadata.update(
            {
                "APCORR": summary["aperture_correction_mag"],
                "APCORRN": summary["aperture_correction_stars"],
                "ZEROPT": summary["zero_point"],
                "ZEROPTER": summary["zero_point_err"],
                "ASTRRMS": summary["astrom_rms_mas"],
                "SEEING": summary["seeing_arcsec"],
                "DEPTH": summary["depth_mag"],
            }
        )
        return {"calexp": exposure, "src": src, "summary": summary}

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
