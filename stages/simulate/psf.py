"""The true PSF of a simulated exposure: the atmospheric part convolved with the optical part.

The optical (telescope/camera) part comes from the instrument model,
:meth:`repo.instruments.simcam.SimCam.optical_psf`. The atmospheric part is a Moffat profile whose
index is fixed per visit and whose FWHM and ellipticity vary linearly over the focal plane
(see :class:`stages.simulate.plan.VisitConditions`). All profiles are GalSim objects in pixel
units with unit flux, centred on the origin.
"""

from __future__ import annotations

from typing import Any

import galsim
import numpy as np

from repo.errors import DrpError
from repo.instruments.simcam import SimCam, rotate_ellipticity

from .plan import Visit

#: GalSim accuracy settings used for every rendered profile (0.1% folding, 1e-4 k-space cut).
GSPARAMS = galsim.GSParams(folding_threshold=1e-3, maxk_threshold=1e-4)


def atmospheric_psf_params(
    camera: SimCam, visit: Visit, detector: int, x: Any, y: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Atmospheric FWHM (pixels) and ellipticity (e1, e2, detector pixel frame) at positions."""
    c = visit.conditions
    fx, fy = camera.pixel_to_focal_plane(detector, x, y)
    u, v = fx / camera.field_radius_mm, fy / camera.field_radius_mm
    fwhm = c.seeing * (1.0 + c.fwhm_gx * u + c.fwhm_gy * v) / camera.config.pixel_scale_arcsec
    e1 = c.psf_e1 + c.e1_gx * u + c.e1_gy * v
    e2 = c.psf_e2 + c.e2_gx * u + c.e2_gy * v
    e1, e2 = rotate_ellipticity(e1, e2, camera.detector(detector).orientation)
    return fwhm, e1, e2


def atmospheric_psf(
    camera: SimCam, visit: Visit, detector: int, x: float, y: float
) -> galsim.GSObject:
    """The atmospheric part of the PSF at a detector position (unit flux, pixel units)."""
    fwhm, e1, e2 = atmospheric_psf_params(camera, visit, detector, x, y)
    moffat = galsim.Moffat(beta=visit.conditions.moffat_beta, fwhm=float(fwhm), gsparams=GSPARAMS)
    return moffat.shear(e1=float(e1), e2=float(e2))


def psf_params(
    camera: SimCam, visit: Visit, detector: int, x: Any, y: Any
) -> dict[str, np.ndarray]:
    """Parameters of the true PSF at positions (vectorized): atmospheric and optical parts.

    Keys: ``atm_fwhm``, ``atm_e1``, ``atm_e2``, ``opt_fwhm``, ``opt_e1``, ``opt_e2`` (FWHM in
    pixels, ellipticities in the detector pixel frame).
    """
    atm = atmospheric_psf_params(camera, visit, detector, x, y)
    opt = camera.optical_psf_params(detector, x, y, visit.band)
    names = ("atm_fwhm", "atm_e1", "atm_e2", "opt_fwhm", "opt_e1", "opt_e2")
    return dict(zip(names, (np.asarray(a, dtype=float) for a in (*atm, *opt)), strict=True))


def psf_from_params(
    beta: float,
    atm_fwhm: float,
    atm_e1: float,
    atm_e2: float,
    opt_fwhm: float,
    opt_e1: float,
    opt_e2: float,
) -> galsim.GSObject:
    """The PSF profile (unit flux, pixel units) from the parameters of :func:`psf_params`."""
    atmosphere = galsim.Moffat(beta=beta, fwhm=float(atm_fwhm), gsparams=GSPARAMS).shear(
        e1=float(atm_e1), e2=float(atm_e2)
    )
    optical = galsim.Gaussian(fwhm=float(opt_fwhm), gsparams=GSPARAMS).shear(
        e1=float(opt_e1), e2=float(opt_e2)
    )
    return galsim.Convolve(atmosphere, optical, gsparams=GSPARAMS)


def psf_at(camera: SimCam, visit: Visit, detector: int, x: float, y: float) -> galsim.GSObject:
    """The full true PSF at a detector position: atmosphere convolved with optics.

    Parameters
    ----------
    camera : SimCam
        The camera (for the optical part and the geometry).
    visit : Visit
        The visit (for its atmospheric conditions and band).
    detector : int
        Detector id.
    x, y : float
        Position (0-based pixels of the assembled detector image).

    Returns
    -------
    galsim.GSObject
        Unit-flux profile in pixel units, without the pixel response (draw it with
        ``method='auto'`` to include the pixel, as the simulator does).
    """
    params = psf_params(camera, visit, detector, x, y)
    return psf_from_params(visit.conditions.moffat_beta, **params)


def psf_image(
    camera: SimCam, visit: Visit, detector: int, x: float, y: float, size: int = 41
) -> np.ndarray:
    """The true PSF at a position as a pixelized, centred, unit-sum image (odd ``size``)."""
    if size % 2 == 0:
        raise DrpError(f"psf_image size must be odd, got {size}")
    image = psf_at(camera, visit, detector, x, y).drawImage(nx=size, ny=size, scale=1.0)
    array = image.array.astype(float)
    return array / array.sum()
