"""Truth of one simulated raw: the table of every source on the detector, and the truth masks.

Truth table columns (one row per source whose true centre lies on the detector; positions are
0-based pixels of the assembled detector image, pixel centres at integers):

========================= ======== ==========================================================
column                    unit     meaning
========================= ======== ==========================================================
``id``                             source id, unique across kinds (see :mod:`.sky`)
``source_type``                    ``star``, ``galaxy``, ``transient`` or ``asteroid``
``is_variable``                    periodic variable star
``x``, ``y``              pixel    true centroid (mid-exposure for asteroids)
``ra``, ``dec``           deg      true position at this visit (proper motion applied)
``mag``                   mag      AB magnitude in this band at this visit (NaN if no flux)
``mean_mag``              mag      mean (catalog) magnitude; peak magnitude for transients
``flux_nJy``              nJy      flux in this band at this visit
``flux_electrons``        e-       total electrons in the exposure at unit flat response
``response``                       true flat-field response at the source's pixel
``var_phase``                      variable-star phase (0 at maximum), NaN otherwise
``days_from_t0``          d        time since the transient's ``t0``, NaN otherwise
``disk_hlr``              arcsec   disk half-light radius (0 for point sources)
``bulge_hlr``             arcsec   bulge half-light radius (0 for point sources)
``bulge_fraction``                 bulge-to-total flux ratio in this band
``disk_e1``, ``disk_e2``           disk ellipticity, sky frame (+x west, +y north)
``bulge_e1``, ``bulge_e2``         bulge ellipticity, sky frame
``trail_length``          pixel    asteroid trail length in this exposure (0 otherwise)
``trail_angle``           deg      trail direction from +x towards +y (pixel frame)
``saturated``                      expected charge reaches full well in the central 3x3
========================= ======== ==========================================================

The table's ``meta`` holds ``instrument``, ``visit``, ``detector``, ``band``, the visit's true
``zero_point`` and ``njy_per_electron`` (see :mod:`.plan`) and its ``pointing_error_ra`` and
``pointing_error_dec`` (arcsec, reported minus true). "Unit flat response" is the response of a
pixel with flat value 1 (:meth:`repo.instruments.simcam.SimCam.flat`: on the optical axis, mean
pixel response); a source's raw electrons are ``flux_electrons`` times the flat it falls on.

Truth masks (``ny`` x ``nx`` arrays of the assembled detector):

================================ ============================================================
``cosmic_ray``                   bool: pixels that received cosmic-ray charge
``cosmic_ray_electrons``         float32: cosmic-ray charge (electrons)
``saturated``                    bool: pixels at full well (including bleed trails)
``bad``                          bool: the camera's defects (bad columns, hot pixels)
================================ ============================================================
"""

from __future__ import annotations

import numpy as np
from astropy.io import fits
from astropy.table import Table, vstack

from repo.errors import CorruptDatasetError
from repo.formatters.fits import compressed_hdu
from repo.instruments.simcam import AB_NJY_ZERO_POINT, SimCam

from .plan import SurveyPlan, Visit
from .render import DetectorSignal
from .sky import (
    SkyModel,
    asteroid_positions,
    mag_to_njy,
    star_magnitudes,
    star_positions,
    transient_flux,
    variable_phase,
)

#: Sources whose centre is within this many pixels outside a detector are still rendered.
MARGIN = 100

#: Truth table columns: name -> (unit, description).
TRUTH_COLUMNS: dict[str, tuple[str, str]] = {
    "id": ("", "source id"),
    "source_type": ("", "star, galaxy, transient or asteroid"),
    "is_variable": ("", "periodic variable star"),
    "x": ("pixel", "true centroid x (0-based)"),
    "y": ("pixel", "true centroid y (0-based)"),
    "ra": ("deg", "true right ascension at this visit"),
    "dec": ("deg", "true declination at this visit"),
    "mag": ("mag", "AB magnitude in this band at this visit"),
    "mean_mag": ("mag", "mean magnitude (peak for transients)"),
    "flux_nJy": ("nJy", "flux in this band at this visit"),
    "flux_electrons": ("electron", "electrons in the exposure at unit flat response"),
    "response": ("", "true flat-field response at the source"),
    "var_phase": ("", "variable-star phase, 0 at maximum"),
    "days_from_t0": ("d", "days since the transient's t0"),
    "disk_hlr": ("arcsec", "disk half-light radius"),
    "bulge_hlr": ("arcsec", "bulge half-light radius"),
    "bulge_fraction": ("", "bulge-to-total flux ratio in this band"),
    "disk_e1": ("", "disk ellipticity e1, sky frame (+x west, +y north)"),
    "disk_e2": ("", "disk ellipticity e2, sky frame"),
    "bulge_e1": ("", "bulge ellipticity e1, sky frame"),
    "bulge_e2": ("", "bulge ellipticity e2, sky frame"),
    "trail_length": ("pixel", "asteroid trail length"),
    "trail_angle": ("deg", "trail direction from +x towards +y"),
    "saturated": ("", "expected charge reaches full well at the centre"),
}

#: Truth mask names and the dtype each is stored with.
MASK_DTYPES: dict[str, type] = {
    "cosmic_ray": np.uint8,
    "cosmic_ray_electrons": np.float32,
    "saturated": np.uint8,
    "bad": np.uint8,
}


def _empty_columns(n: int) -> dict[str, np.ndarray]:
    cols: dict[str, np.ndarray] = {
        "is_variable": np.zeros(n, bool),
        "var_phase": np.full(n, np.nan),
        "days_from_t0": np.full(n, np.nan),
    }
    for name in ("disk_hlr", "bulge_hlr", "bulge_fraction", "trail_length", "trail_angle"):
        cols[name] = np.zeros(n)
    for name in ("disk_e1", "disk_e2", "bulge_e1", "bulge_e2"):
        cols[name] = np.zeros(n)
    cols["jacobian"] = np.zeros((n, 4))
    return cols


def _block(kind: str, ids, ra, dec, mean_mag, flux_njy, **extra) -> Table:
    n = len(ids)
    cols = _empty_columns(n)
    cols.update({k: np.asarray(v) for k, v in extra.items()})
    table = Table(
        {
            "id": np.asarray(ids, dtype=np.int64),
            "source_type": np.full(n, kind, dtype="U9"),
            "ra": np.asarray(ra, dtype=float),
            "dec": np.asarray(dec, dtype=float),
            "mean_mag": np.asarray(mean_mag, dtype=float),
            "flux_nJy": np.asarray(flux_njy, dtype=float),
        }
    )
    for name, values in cols.items():
        table[name] = values
    return table


def _local_jacobian(camera: SimCam, visit: Visit, detector: int, ra, dec) -> np.ndarray:
    """d(pixel)/d(west, north arcsec) at each position, flattened as (dxdW, dxdN, dydW, dydN)."""
    c = visit.conditions
    pointing = (c.true_ra, c.true_dec, c.true_rotation)
    ra, dec = np.asarray(ra, float), np.asarray(dec, float)
    step = 1.0 / 3600.0
    x0, y0 = camera.sky_to_pixel(detector, ra, dec, *pointing)
    xw, yw = camera.sky_to_pixel(detector, ra - step / np.cos(np.radians(dec)), dec, *pointing)
    xn, yn = camera.sky_to_pixel(detector, ra, dec + step, *pointing)
    return np.stack([xw - x0, xn - x0, yw - y0, yn - y0], axis=1)


def visit_sources(
    plan: SurveyPlan, sky: SkyModel, visit: Visit, detector: int, margin: int = MARGIN
) -> Table:
    """Every source whose light may fall on a detector in a visit, with its state and position.

    Returns the truth columns plus ``jacobian`` (for galaxies: pixel per arcsec in the sky
    frame) and ``on_detector`` (centre on the detector).
    """
    camera = plan.camera
    band, mjd = visit.band, visit.mjd_mid
    blocks = []
    stars = sky.stars
    ra, dec = star_positions(stars, mjd)
    mags = star_magnitudes(stars, band, mjd)
    blocks.append(
        _block(
            "star",
            stars["id"],
            ra,
            dec,
            stars[f"mag_{band}"],
            mag_to_njy(mags),
            is_variable=np.asarray(stars["is_variable"]),
            var_phase=variable_phase(stars, mjd),
        )
    )
    gal = sky.galaxies
    blocks.append(
        _block(
            "galaxy",
            gal["id"],
            gal["ra"],
            gal["dec"],
            gal[f"mag_{band}"],
            mag_to_njy(gal[f"mag_{band}"]),
            disk_hlr=gal["disk_hlr"],
            bulge_hlr=gal["bulge_hlr"],
            bulge_fraction=gal[f"bulge_fraction_{band}"],
            disk_e1=gal["disk_e1"],
            disk_e2=gal["disk_e2"],
            bulge_e1=gal["bulge_e1"],
            bulge_e2=gal["bulge_e2"],
            jacobian=_local_jacobian(camera, visit, detector, gal["ra"], gal["dec"]),
        )
    )
    tr = sky.transients
    blocks.append(
        _block(
            "transient",
            tr["id"],
            tr["ra"],
            tr["dec"],
            tr[f"peak_mag_{band}"],
            transient_flux(tr, band, mjd),
            days_from_t0=mjd - np.asarray(tr["t0"]),
        )
    )
    blocks.append(_asteroid_block(camera, sky, visit, detector))
    table = vstack(blocks, metadata_conflicts="silent")
    c = visit.conditions
    x, y = camera.sky_to_pixel(
        detector, table["ra"], table["dec"], c.true_ra, c.true_dec, c.true_rotation
    )
    det = camera.detector(detector)
    table["x"] = x
    table["y"] = y
    near = (x > -margin) & (x < det.nx + margin) & (y > -margin) & (y < det.ny + margin)
    table = table[near]
    table["on_detector"] = (
        (table["x"] >= -0.5)
        & (table["x"] < det.nx - 0.5)
        & (table["y"] >= -0.5)
        & (table["y"] < det.ny - 0.5)
    )
    flux = np.asarray(table["flux_nJy"])
    table["flux_electrons"] = flux / c.njy_per_electron
    with np.errstate(divide="ignore"):
        table["mag"] = np.where(flux > 0, AB_NJY_ZERO_POINT - 2.5 * np.log10(flux), np.nan)
    return table


def _asteroid_block(camera: SimCam, sky: SkyModel, visit: Visit, detector: int) -> Table:
    ast = sky.asteroids
    c = visit.conditions
    pointing = (c.true_ra, c.true_dec, c.true_rotation)
    ra, dec = asteroid_positions(ast, visit.mjd_mid)
    ra0, dec0 = asteroid_positions(ast, visit.mjd)
    ra1, dec1 = asteroid_positions(ast, visit.mjd + visit.exposure_time / 86400.0)
    x0, y0 = camera.sky_to_pixel(detector, ra0, dec0, *pointing)
    x1, y1 = camera.sky_to_pixel(detector, ra1, dec1, *pointing)
    return _block(
        "asteroid",
        ast["id"],
        ra,
        dec,
        ast[f"mag_{visit.band}"],
        mag_to_njy(ast[f"mag_{visit.band}"]),
        trail_length=np.hypot(x1 - x0, y1 - y0),
        trail_angle=np.degrees(np.arctan2(y1 - y0, x1 - x0)),
    )


def truth_table(
    sources: Table, signal: DetectorSignal, camera: SimCam, visit: Visit, detector: int
) -> Table:
    """The truth table of a raw (see the module docstring) from its rendered sources."""
    on = sources[np.asarray(sources["on_detector"])]
    det = camera.detector(detector)
    ix = np.clip(np.rint(np.asarray(on["x"])).astype(int), 0, det.nx - 1)
    iy = np.clip(np.rint(np.asarray(on["y"])).astype(int), 0, det.ny - 1)
    padded = np.pad(signal.expected, 1, mode="edge")
    peak = np.max(
        [padded[iy + 1 + dy, ix + 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0
    )
    out = Table()
    for name, (unit, doc) in TRUTH_COLUMNS.items():
        if name == "response":
            values = camera.flat(detector, visit.band)[iy, ix].astype(float)
        elif name == "saturated":
            values = peak >= camera.config.full_well
        else:
            values = on[name]
        out[name] = values
        out[name].unit = unit or None
        out[name].description = doc
    out.meta.update(
        {
            "instrument": camera.name,
            "visit": visit.id,
            "detector": det.id,
            "band": visit.band,
            "zero_point": visit.conditions.zero_point,
            "njy_per_electron": visit.conditions.njy_per_electron,
            "pointing_error_ra": visit.conditions.pointing_error_ra,
            "pointing_error_dec": visit.conditions.pointing_error_dec,
        }
    )
    return out


def truth_masks(camera: SimCam, detector: int, signal: DetectorSignal) -> dict[str, np.ndarray]:
    """The truth masks of a raw (see the module docstring)."""
    return {
        "cosmic_ray": signal.cosmic_rays > 0,
        "cosmic_ray_electrons": signal.cosmic_rays.astype(np.float32),
        "saturated": signal.saturated.copy(),
        "bad": camera.defects(detector),
    }


def masks_to_hdulist(masks: dict[str, np.ndarray]) -> fits.HDUList:
    """Truth masks as a FITS file: an empty primary HDU and one image HDU per mask.

    The images are tile-compressed without loss (:func:`repo.formatters.fits.compressed_hdu`):
    they are mostly zeros, and compression makes them ~100x smaller.
    """
    hdus = [fits.PrimaryHDU()]
    for name, dtype in MASK_DTYPES.items():
        if name not in masks:
            raise CorruptDatasetError(f"truth masks lack {name!r}")
        data = np.asarray(masks[name]).astype(dtype)
        hdus.append(compressed_hdu(data, name.upper()))
    return fits.HDUList(hdus)


def masks_from_hdulist(hdulist: fits.HDUList) -> dict[str, np.ndarray]:
    """Truth masks read back from :func:`masks_to_hdulist` output."""
    masks = {}
    for name, dtype in MASK_DTYPES.items():
        try:
            data = hdulist[name.upper()].data
        except KeyError:
            raise CorruptDatasetError(f"truth mask file has no {name.upper()} extension") from None
        masks[name] = data.astype(bool) if dtype is np.uint8 else data.astype(np.float32)
    return masks
