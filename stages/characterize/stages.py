"""The characterization stage, per (instrument, visit, detector)::

    postISRCCD --characterize--> icExp, calexpBackground, icSrc, icPsfStars

Cosmic rays are found and repaired (:func:`stages.characterize.cosmic_rays.reject_cosmic_rays`,
whose lower bound of the PSF width is the sharpest optical PSF of the detector, the atmosphere
only broadening it); the background (:func:`stages.characterize.background.estimate_background`:
sources found 5 sigma above sep's first pass masked, then the sigma-clipped mean of each box,
which unlike sep's mode estimate is not low on a Poisson sky) is subtracted and stored as a
table; a first detection and measurement without PSF follows, then the PSF
(:func:`stages.characterize.psf_determination.determine_psf`, optical part from the camera
model) is attached to the exposure. ``icSrc`` is the first-pass catalog
(``calib_psf_candidate``, ``calib_psf_used``, ``calib_psf_reserved`` mark the PSF stars) and
``icPsfStars`` the PSF stars with their model residuals (reserved stars validate the model).

:class:`CharacterizeCpStage` does the same for exposures another pipeline reduced (DECam CP
``instcal``, pipeline ``drp-cp``): no cosmic-ray pass and no optical model, and the exposure's own
PSF (the CP's PSFEx model) as the fallback of the fit, then a Gaussian of its header seeing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.table import Table

from repo.errors import DrpError
from repo.exposure import Exposure
from repo.psf import FWHM_PER_SIGMA, GaussianPsf, Psf
from stages.framework.base import Connection, Stage
from stages.isr.stages import CAMERA, POST_ISR, VISIT_DIMS, camera_from_dataset
from stages.measure.measurement import MeasurementConfig, detect_and_measure

from .background import background_to_table, estimate_background, subtract_background
from .cosmic_rays import CosmicRayConfig, reject_cosmic_rays
from .psf_determination import PsfDeterminationConfig, determine_psf, optical_field

INSTCAL = Connection(
    "instcal",
    VISIT_DIMS,
    "Exposure",
    doc="exposure reduced by another pipeline (DECam CP InstCal), as ingested",
)
IMAGE = Connection(
    "image",
    VISIT_DIMS,
    "Exposure",
    doc="calibrated image of another survey (2MASS, SDSS, Spitzer), as ingested",
)
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


#: :func:`stages.characterize.cosmic_rays.estimate_psf_sigma` returns 0.9 x the stars' adaptive sigma.
CORE_FACTOR = 0.9


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


@dataclass(frozen=True)
class CharacterizeCpConfig(CharacterizeConfig):
    """Options of :class:`CharacterizeCpStage` (``cosmic_rays`` and ``gaussian_fallback`` are
    not used: the other pipeline repaired the cosmic rays, and the fallbacks are the
    exposure's own PSF and seeing).

    Parameters
    ----------
    use_input_psf : bool
        Keep the exposure's own PSF (the CP's PSFEx model) instead of fitting one.
    """

    use_input_psf: bool = False


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
        exposure.metadata.update({"NCRPIX": int(cr_mask.sum()), "CRSIGMA": float(cr_sigma)})
        optical = optical_field(cam, detector, band, exposure.shape)
        fallbacks = (
            [("gaussian", GaussianPsf(cr_sigma / CORE_FACTOR))] if cfg.gaussian_fallback else []
        )
        return self.characterize(exposure, optical, fallbacks)

    def characterize(
        self,
        exposure: Exposure,
        optical: Any,
        fallbacks: list[tuple[str, Psf]],
        *,
        fit: bool = True,
    ) -> dict[str, Any]:
        """Background, first detection and measurement, and the PSF of a cosmic-ray-free
        exposure; the outputs of the stage. ``fallbacks`` are the PSFs to use, in order, when
        the detector has too few PSF stars for the fit (``(name, psf)``; none: the fit's error
        is raised); ``fit=False`` takes the first one without a fit."""
        cfg = self.config
        model, level = estimate_background(
            exposure,
            cfg.background_mesh,
            cfg.background_filter,
            source_sigma=cfg.background_source_sigma,
            estimator=cfg.background_estimator,
        )
        subtract_background(exposure, level)
        catalog = detect_and_measure(exposure, cfg.measurement)
        stars = self._attach_psf(exposure, catalog, optical, fallbacks, fit)
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
        self,
        exposure: Exposure,
        catalog: Table,
        optical: Any,
        fallbacks: list[tuple[str, Psf]],
        fit: bool,
    ) -> Table:
        """Fit the PSF (or take the first fallback), attach it, return the PSF-star table."""
        try:
            if not fit:
                raise DrpError("no PSF fit asked for")
            result = determine_psf(exposure, catalog, optical, self.config.psf)
        except DrpError as exc:
            if not fallbacks:
                raise
            source, exposure.psf = fallbacks[0]
            ny, nx = exposure.shape
            exposure.metadata.update(
                {
                    "PSFFALLB": fit,  # a fallback, not a choice
                    "PSFSRC": source,
                    "PSFFWHM": float(exposure.psf.fwhm((nx - 1) / 2, (ny - 1) / 2)),
                }
            )
            stars = Table({name: np.zeros(0) for name in ("x", "y", "snr", "sizeResid")})
            stars["sourceIndex"] = np.zeros(0, int)
            stars["reserved"] = stars["used"] = stars["outlier"] = np.zeros(0, bool)
            stars.meta["fallback"] = f"{exc}; PSF: {source}"
            return stars
        exposure.psf = result.psf
        summary = result.summary()
        exposure.metadata.update(
            {
                "PSFFALLB": False,
                "PSFSRC": "fit",
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


class CharacterizeCpStage(CharacterizeStage):
    """Background and PSF of an exposure reduced by another pipeline (DECam CP ``instcal``).

    The instrument signature and cosmic rays were removed by that pipeline, and no camera
    model of ours describes its optics: the PSF is fitted to the stars alone (no optical
    part). With too few PSF stars, the exposure's own PSF (the CP's PSFEx model, attached at
    ingest) is used, else a Gaussian of the header's seeing (``FWHM``, pixels); ``PSFSRC``
    in the metadata says which (``fit``, ``input`` or ``seeing``). With ``use_input_psf`` the
    exposure's own PSF is kept without a fit. When there is an input PSF, its FWHM at the
    centre is kept as ``PSFINFW`` beside ours, a check of one against the other.
    """

    inputs = {"exposure": INSTCAL}
    config_class = CharacterizeCpConfig

    def run(self, exposure: Exposure, data_id: Any) -> dict[str, Any]:
        cfg = self.config
        fallbacks: list[tuple[str, Psf]] = []
        ny, nx = exposure.shape
        if exposure.psf is not None:
            exposure.metadata["PSFINFW"] = float(exposure.psf.fwhm((nx - 1) / 2, (ny - 1) / 2))
            fallbacks.append(("input", exposure.psf))
        seeing = exposure.metadata.get("FWHM")
        if isinstance(seeing, int | float) and math.isfinite(seeing) and seeing > 0:
            fallbacks.append(("seeing", GaussianPsf(float(seeing) / FWHM_PER_SIGMA)))
        if cfg.use_input_psf and exposure.psf is None:
            raise DrpError(
                f"characterize {dict(data_id)}: use_input_psf is set but the exposure has no "
                "PSF (ingest its PSFEx file with it)"
            )
        exposure.psf = None
        return self.characterize(exposure, None, fallbacks, fit=not cfg.use_input_psf)


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


class CharacterizeImageStage(CharacterizeCpStage):
    """:class:`CharacterizeCpStage` for the calibrated images of other surveys (``image``:
    2MASS atlas tiles, SDSS frames, Spitzer mosaics; pipeline ``drp-image``)."""

    inputs = {"exposure": IMAGE}
