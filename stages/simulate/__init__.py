"""The simulated survey: a camera (SimCam), its calibration frames, and a multi-band,
multi-epoch sky with its truth.

Typical use::

    from stages.simulate import SurveyConfig, make_plan, make_sky, simulate_raw

    config = SurveyConfig.from_preset("tiny", seed=3)
    plan = make_plan(config)
    sky = make_sky(config, plan)
    raw, truth, masks = simulate_raw(plan, sky, plan.visits[0].id, detector_id=0)

Modules: :mod:`.config` (presets, seeds), :mod:`.plan` (visits and conditions), :mod:`.sky`
(sources and the reference catalog), :mod:`.psf` (the true PSF), :mod:`.render` (GalSim drawing
and detector effects), :mod:`.cosmic_rays`, :mod:`.raw` (FITS files and their header keys) and
:mod:`.truth` (truth tables and masks).
"""

from .config import PRESETS, SurveyConfig, survey_rng
from .plan import CalibrationExposure, SurveyPlan, Visit, VisitConditions, make_plan
from .psf import atmospheric_psf, psf_at, psf_image
from .raw import simulate_calibration_frames, simulate_raw
from .sky import REFCAT_COLUMNS, SkyModel, make_sky
from .truth import TRUTH_COLUMNS, masks_from_hdulist, masks_to_hdulist

__all__ = [
    "PRESETS",
    "REFCAT_COLUMNS",
    "TRUTH_COLUMNS",
    "CalibrationExposure",
    "SkyModel",
    "SurveyConfig",
    "SurveyPlan",
    "Visit",
    "VisitConditions",
    "atmospheric_psf",
    "make_plan",
    "make_sky",
    "masks_from_hdulist",
    "masks_to_hdulist",
    "psf_at",
    "psf_image",
    "simulate_calibration_frames",
    "simulate_raw",
    "survey_rng",
]
