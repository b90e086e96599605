"""Raw files of the simulated survey: science exposures and calibration frames, per detector.

A raw is one multi-extension FITS file per (exposure, detector): an empty primary HDU with the
exposure's header, then one 16-bit image HDU per amplifier (raw layout: data, serial overscan to
the right, parallel overscan above; see :class:`repo.instruments.simcam.Amplifier`). Pixel
values are unsigned 16-bit ADU (``BITPIX = 16``, ``BZERO = 32768``). Nothing true that an
observatory would not know is written: no seeing, no true pointing, no truth of any kind.

Primary header
--------------
======== ============================================================================
key      meaning
======== ============================================================================
ORIGIN   ``drp.simulate``
TELESCOP ``SimTel``
INSTRUME ``SimCam``
OBSERVAT ``SimObs``; OBS-LAT, OBS-LONG (deg, east positive), OBS-ELEV (m)
DETECTOR detector serial number (``SIM-CCD-000``)
DETNAME  detector name (``S00`` for row 0, column 0 of the focal-plane grid)
CCDNUM   detector id (int; the ``detector`` dimension value)
DETSIZE  ``[1:nx,1:ny]`` size of the assembled detector
NAMPS    number of amplifier extensions
EXPNUM   exposure id (int; the ``visit`` dimension value of a science exposure)
DAYOBS   observing night (YYYYMMDD, the UTC date 12 hours before)
SEQNUM   sequence number in the night
OBSID    ``SimCam_<DAYOBS>_<SEQNUM>``
OBSTYPE  ``object``, ``bias``, ``dark`` or ``flat``
OBJECT   target name (science), else the OBSTYPE
DATE-OBS start of the exposure (ISO 8601, UTC); TIMESYS = ``UTC``
MJD-OBS  start of the exposure (MJD, UTC)
EXPTIME  exposure time (s); DARKTIME: dark-current integration time (s)
FILTER   physical filter in the beam (``SimCam-r``; biases and darks: the first survey band's)
BAND     band of FILTER (``r``)
RA, DEC  telescope boresight as reported (deg, ICRS; science only)
ROTANGLE sky position angle of the focal-plane +Y axis (deg east of north; science only)
AIRMASS  airmass at the start (science only); ZD: zenith distance (deg)
======== ============================================================================

Amplifier extension headers
---------------------------
======== ============================================================================
EXTNAME  ``AMP0``, ``AMP1`` ...; AMPNAME: the same; CCDNUM, DETSIZE as above
INHERIT  ``T`` (read the primary header too)
DATASEC  data section of this extension, e.g. ``[1:512,1:1024]``
BIASSEC  serial overscan (data rows), e.g. ``[513:544,1:1024]``
PBIASSEC parallel overscan rows, e.g. ``[1:512,1025:1040]``
DETSEC   where DATASEC goes in the assembled detector, e.g. ``[513:1024,1:1024]``
GAIN     e-/ADU; RDNOISE: read noise (e-); SATURATE: ADU above which a pixel is at full well
WCS      approximate TAN-SIP WCS (science only): WCSAXES, CTYPEi, CUNITi, CRVALi, CRPIXi,
         CDi_j, RADESYS, A/B (order 5) and AP/BP (order 3) terms, built from the reported
         pointing and the camera's distortion, for this extension's pixels. AMP0 starts at
         detector column 1, so its WCS is also the WCS of the assembled detector image.
======== ============================================================================
"""

from __future__ import annotations

import numpy as np
from astropy.io import fits
from astropy.table import Table

from repo.errors import DrpError
from repo.formatters.fits import compressed_hdu
from repo.instruments.simcam import SimCam

from .config import SurveyConfig, survey_rng
from .cosmic_rays import cosmic_ray_deposits
from .plan import (
    SITE_ELEVATION,
    SITE_LATITUDE,
    SITE_LONGITUDE,
    CalibrationExposure,
    SurveyPlan,
    Visit,
    make_plan,
)
from .render import detector_signal, read_out, render_sources, sky_image
from .sky import SkyModel
from .truth import truth_masks, truth_table, visit_sources

#: Keys every raw's primary header carries (science raws add SCIENCE_KEYS).
PRIMARY_KEYS = (
    "ORIGIN",
    "TELESCOP",
    "INSTRUME",
    "OBSERVAT",
    "OBS-LAT",
    "OBS-LONG",
    "OBS-ELEV",
    "DETECTOR",
    "DETNAME",
    "CCDNUM",
    "DETSIZE",
    "NAMPS",
    "EXPNUM",
    "DAYOBS",
    "SEQNUM",
    "OBSID",
    "OBSTYPE",
    "OBJECT",
    "DATE-OBS",
    "TIMESYS",
    "MJD-OBS",
    "EXPTIME",
    "DARKTIME",
    "FILTER",
    "BAND",
)
SCIENCE_KEYS = ("RA", "DEC", "ROTANGLE", "AIRMASS", "ZD")
#: WCS keys of science amplifier extensions.
WCS_KEYS = (
    "WCSAXES",
    "CTYPE1",
    "CTYPE2",
    "CUNIT1",
    "CUNIT2",
    "CRVAL1",
    "CRVAL2",
    "CRPIX1",
    "CRPIX2",
    "CD1_1",
    "CD1_2",
    "CD2_1",
    "CD2_2",
    "RADESYS",
    "A_ORDER",
    "B_ORDER",
    "AP_ORDER",
    "BP_ORDER",
)
AMPLIFIER_KEYS = (
    "EXTNAME",
    "AMPNAME",
    "CCDNUM",
    "DETSIZE",
    "INHERIT",
    "DATASEC",
    "BIASSEC",
    "DETSEC",
    "GAIN",
    "RDNOISE",
    "SATURATE",
)


def _primary_header(
    camera: SimCam,
    detector: int,
    exposure: Visit | CalibrationExposure,
    obstype: str,
) -> fits.Header:
    det = camera.detector(detector)
    filt = camera.filter(exposure.band)
    exptime = exposure.exposure_time
    hdr = fits.Header()
    hdr["ORIGIN"] = ("drp.simulate", "software that wrote the file")
    hdr["TELESCOP"] = ("SimTel", "telescope")
    hdr["INSTRUME"] = (camera.name, "instrument")
    hdr["OBSERVAT"] = ("SimObs", "observatory")
    hdr["OBS-LAT"] = (SITE_LATITUDE, "[deg] observatory latitude")
    hdr["OBS-LONG"] = (SITE_LONGITUDE, "[deg] observatory east longitude")
    hdr["OBS-ELEV"] = (SITE_ELEVATION, "[m] observatory elevation")
    hdr["DETECTOR"] = (f"SIM-CCD-{det.id:03d}", "detector serial number")
    hdr["DETNAME"] = (det.name, "detector name (focal-plane position)")
    hdr["CCDNUM"] = (det.id, "detector id")
    hdr["DETSIZE"] = (f"[1:{det.nx},1:{det.ny}]", "assembled detector size")
    hdr["NAMPS"] = (len(det.amplifiers), "number of amplifier extensions")
    hdr["EXPNUM"] = (exposure.id, "exposure id")
    hdr["DAYOBS"] = (exposure.day_obs, "observing night (YYYYMMDD)")
    hdr["SEQNUM"] = (exposure.seq, "sequence number in the night")
    hdr["OBSID"] = (f"SimCam_{exposure.day_obs}_{exposure.seq:05d}", "observation id")
    hdr["OBSTYPE"] = (obstype, "type of observation")
    hdr["OBJECT"] = (exposure.target if isinstance(exposure, Visit) else obstype, "target")
    hdr["DATE-OBS"] = (exposure.datetime_begin, "start of the exposure (UTC)")
    hdr["TIMESYS"] = ("UTC", "time scale of DATE-OBS and MJD-OBS")
    hdr["MJD-OBS"] = (exposure.mjd, "start of the exposure (MJD, UTC)")
    hdr["EXPTIME"] = (float(exptime), "[s] exposure time")
    hdr["DARKTIME"] = (float(exptime), "[s] dark-current integration time")
    hdr["FILTER"] = (filt.name, "physical filter in the beam")
    hdr["BAND"] = (filt.band, "band of FILTER")
    if isinstance(exposure, Visit):
        hdr["RA"] = (exposure.ra, "[deg] telescope boresight right ascension")
        hdr["DEC"] = (exposure.dec, "[deg] telescope boresight declination")
        hdr["ROTANGLE"] = (exposure.rotation_angle, "[deg] sky PA of focal-plane +Y, E of N")
        hdr["AIRMASS"] = (exposure.airmass, "airmass at the start")
        hdr["ZD"] = (exposure.zenith_distance, "[deg] zenith distance at the start")
    return hdr


def _amplifier_hdus(
    camera: SimCam,
    detector: int,
    images: list[np.ndarray],
    pointing: tuple[float, float, float] | None,
) -> list[fits.ImageHDU]:
    """One image HDU per amplifier, Rice-compressed as a camera's raws often are (lossless on
    integers, about half the size); with a pointing, each carries its TAN-SIP WCS."""
    det = camera.detector(detector)
    hdus = []
    for amp, image in zip(det.amplifiers, images, strict=True):
        hdr = fits.Header()
        hdr["AMPNAME"] = (amp.name, "amplifier name")
        hdr["CCDNUM"] = (det.id, "detector id")
        hdr["DETSIZE"] = (f"[1:{det.nx},1:{det.ny}]", "assembled detector size")
        hdr["INHERIT"] = (True, "inherit the primary header")
        for key, value in amp.sections().items():
            hdr[key] = (value, _SECTION_DOC[key])
        hdr["GAIN"] = (amp.gain, "[e-/ADU] gain")
        hdr["RDNOISE"] = (amp.read_noise, "[e-] read noise")
        hdr["SATURATE"] = (amp.saturation_adu, "[ADU] saturation level")
        if pointing is not None:
            hdr.extend(camera.wcs_header(det.id, *pointing, x_offset=-amp.x0))
        hdus.append(compressed_hdu(image, amp.name, hdr))
    return hdus


_SECTION_DOC = {
    "DATASEC": "data section",
    "BIASSEC": "serial overscan section",
    "PBIASSEC": "parallel overscan section",
    "DETSEC": "section of the assembled detector",
}


def simulate_raw(
    plan: SurveyPlan,
    sky: SkyModel,
    visit_id: int,
    detector_id: int,
    *,
    cosmic_rays: bool = True,
) -> tuple[fits.HDUList, Table, dict[str, np.ndarray]]:
    """Simulate the raw file of one detector in one visit, with its truth.

    Parameters
    ----------
    plan : SurveyPlan
        The survey plan (:func:`stages.simulate.plan.make_plan`).
    sky : SkyModel
        The sky (:func:`stages.simulate.sky.make_sky`).
    visit_id, detector_id : int
        Which raw.
    cosmic_rays : bool
        Add cosmic rays (every other pixel value is the same either way).

    Returns
    -------
    raw : astropy.io.fits.HDUList
        The raw file (see the module docstring for its layout and header keys).
    truth : astropy.table.Table
        Every source whose centre is on the detector (see :mod:`stages.simulate.truth`).
    masks : dict of numpy.ndarray
        Truth masks of the assembled detector (cosmic rays, saturation, defects).
    """
    camera = plan.camera
    visit = plan.visit(visit_id)
    detector = camera.detector(detector_id).id
    seed = plan.config.seed
    sources = visit_sources(plan, sky, visit, detector)
    scene = sky_image(camera, visit, detector)
    render_sources(camera, visit, detector, sources, scene)
    deposits = None
    if cosmic_rays:
        det = camera.detector(detector)
        cr_rng = survey_rng(seed, "cosmic-rays", visit.id, detector)
        deposits, _ = cosmic_ray_deposits(
            (det.ny, det.nx), visit.exposure_time, plan.config.cosmic_ray_rate, cr_rng
        )
    signal = detector_signal(
        camera,
        detector,
        scene,
        visit.band,
        visit.exposure_time,
        survey_rng(seed, "photons", visit.id, detector),
        deposits,
    )
    images = read_out(
        camera, detector, signal.electrons, survey_rng(seed, "readout", visit.id, detector)
    )
    primary = _primary_header(camera, detector, visit, "object")
    # The approximate WCS: reported pointing and rotation, the camera's distortion.
    pointing = (visit.ra, visit.dec, visit.rotation_angle)
    hdus = fits.HDUList(
        [fits.PrimaryHDU(header=primary), *_amplifier_hdus(camera, detector, images, pointing)]
    )
    truth = truth_table(sources, signal, camera, visit, detector)
    return hdus, truth, truth_masks(camera, detector, signal)


def simulate_calibration_frames(
    config: SurveyConfig | SurveyPlan,
    kind: str,
    detector_id: int,
    band: str | None = None,
    index: int = 0,
) -> fits.HDUList:
    """Simulate one raw calibration frame of a detector: a bias, a dark or a flat (per band).

    Darks integrate ``config.dark_time`` seconds of dark current and cosmic rays; flats are
    5-second exposures of a uniform screen giving ``config.flat_level`` electrons per pixel at unit
    response, times the true flat field, with cosmic rays; biases are readouts only.

    Parameters
    ----------
    config : SurveyConfig or SurveyPlan
        The survey (a plan avoids re-making it for every frame).
    kind : str
        ``'bias'``, ``'dark'`` or ``'flat'``.
    detector_id : int
        Detector id.
    band : str, optional
        Band of a flat (required for flats). Biases and darks accept None or the band of the
        filter in the beam, so that ``simulate_calibration_frames(plan, cal.kind, det, cal.band,
        cal.index)`` works for every ``cal`` in ``plan.calibrations``.
    index : int
        Which frame of its kind (0 .. n_bias/n_dark/n_flat - 1).

    Returns
    -------
    astropy.io.fits.HDUList
        The raw file, laid out like a science raw (``OBSTYPE`` = kind, no WCS).
    """
    plan = config if isinstance(config, SurveyPlan) else make_plan(config)
    config = plan.config
    camera = plan.camera
    exposure = plan.calibration(kind, band if kind == "flat" else None, index)
    if kind != "flat" and band not in (None, exposure.band):
        raise DrpError(f"a {kind} is taken with band {exposure.band} in the beam, not {band!r}")
    detector = camera.detector(detector_id).id
    det = camera.detector(detector)
    seed = config.seed
    scene = None
    if kind == "flat":
        scene = np.full((det.ny, det.nx), config.flat_level)
    deposits = None
    if exposure.exposure_time > 0:
        deposits, _ = cosmic_ray_deposits(
            (det.ny, det.nx),
            exposure.exposure_time,
            config.cosmic_ray_rate,
            survey_rng(seed, "cosmic-rays", exposure.id, detector),
        )
    signal = detector_signal(
        camera,
        detector,
        scene,
        exposure.band,
        exposure.exposure_time,
        survey_rng(seed, "photons", exposure.id, detector),
        deposits,
    )
    images = read_out(
        camera, detector, signal.electrons, survey_rng(seed, "readout", exposure.id, detector)
    )
    primary = _primary_header(camera, detector, exposure, kind)
    return fits.HDUList(
        [fits.PrimaryHDU(header=primary), *_amplifier_hdus(camera, detector, images, None)]
    )
