"""The simulated survey's configuration: presets, scale options and the seed.

A :class:`SurveyConfig` fixes everything the simulator produces: the same configuration gives
byte-identical raws. Options left at ``None`` take the value of the preset:

========== ========= ====== ======= ====== ================ =============== ============
preset     detectors size   bands   epochs stars / arcmin^2 galaxies / am^2 calib frames
========== ========= ====== ======= ====== ================ =============== ============
``tiny``   2         256    g r     2      25               25              3 per kind
``default``4         1024   g r i   4      8                15              5 per kind
========== ========= ====== ======= ====== ================ =============== ============

Random numbers come from :func:`survey_rng`, one independent stream per purpose and key (visit,
detector ...), so that turning one feature off (cosmic rays, for instance) leaves every other
pixel of a raw unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from repo.errors import DrpError
from repo.instruments.simcam import FILTERS, SimCam, SimCamConfig, camera_rng

#: Option values of the presets (everything else has the same default in every preset).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "n_detectors": 2,
        "size": 256,
        "bands": ("g", "r"),
        "n_epochs": 2,
        "star_density": 25.0,
        "galaxy_density": 25.0,
        "n_bias": 3,
        "n_dark": 3,
        "n_flat": 3,
    },
    "default": {
        "n_detectors": 4,
        "size": 1024,
        "bands": ("g", "r", "i"),
        "n_epochs": 4,
        "star_density": 8.0,
        "galaxy_density": 15.0,
        "n_bias": 5,
        "n_dark": 5,
        "n_flat": 5,
    },
}


@dataclass(frozen=True)
class SurveyConfig:
    """Everything that defines a simulated survey.

    Parameters
    ----------
    preset : str
        ``'tiny'`` or ``'default'``; supplies every option left at ``None``.
    seed : int
        Seed of the sky, the plan and the noise (the camera has its own fixed seed).
    n_detectors, size : int
        Detectors in the camera and their size (square, pixels).
    bands : tuple of str
        Bands observed each epoch, from ``g``, ``r``, ``i``.
    n_epochs : int
        Nights; each night observes every band once.
    star_density, galaxy_density : float
        Sources per arcmin^2 (stars 14.5 < r < 23.5, galaxies 18 < r < 24.5).
    exposure_time : float
        Seconds per science exposure.
    n_variables, n_transients : int
        Periodic variable stars and supernova-like transients.
    asteroids : bool
        One trailed asteroid crossing the field each night.
    ra, dec : float
        Field centre (deg).
    dither_fraction : float
        Dither radius as a fraction of the field radius.
    pointing_error_arcsec : float
        rms per axis of the difference between the reported and the true pointing.
    cosmic_ray_rate : float
        Cosmic-ray hits per megapixel per second.
    n_bias, n_dark, n_flat : int
        Calibration frames per detector (flats per band).
    dark_time, flat_level : float
        Dark exposure time (s); flat illumination (electrons per pixel at unit response).
    start_date : str
        First night (YYYY-MM-DD, UTC date of the evening).
    """

    preset: str = "default"
    seed: int = 1
    n_detectors: int | None = None
    size: int | None = None
    bands: tuple[str, ...] | None = None
    n_epochs: int | None = None
    star_density: float | None = None
    galaxy_density: float | None = None
    exposure_time: float = 30.0
    n_variables: int = 3
    n_transients: int = 1
    asteroids: bool = True
    ra: float = 53.1
    dec: float = -27.8
    dither_fraction: float = 0.1
    pointing_error_arcsec: float = 3.0
    cosmic_ray_rate: float = 2.0
    n_bias: int | None = None
    n_dark: int | None = None
    n_flat: int | None = None
    dark_time: float = 120.0
    flat_level: float = 30000.0
    start_date: str = "2025-10-13"

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise DrpError(f"unknown survey preset {self.preset!r} (known: {', '.join(PRESETS)})")
        for name, value in PRESETS[self.preset].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        object.__setattr__(self, "bands", tuple(self.bands))
        unknown = [b for b in self.bands if b not in FILTERS]
        if unknown or not self.bands or len(set(self.bands)) != len(self.bands):
            raise DrpError(f"bands must be distinct values from g, r, i; got {self.bands}")
        for name in ("n_detectors", "size", "n_epochs", "n_bias", "n_dark", "n_flat"):
            if int(getattr(self, name)) < 1:
                raise DrpError(f"SurveyConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_bias + self.n_dark + self.n_flat * len(self.bands) > 499:
            raise DrpError("at most 499 calibration exposures (n_bias + n_dark + n_flat * bands)")
        if self.size < 64 or self.size % 2:
            raise DrpError(f"SurveyConfig.size must be an even number >= 64, got {self.size}")
        for name in ("exposure_time", "dark_time", "flat_level"):
            if not getattr(self, name) > 0:
                raise DrpError(f"SurveyConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("star_density", "galaxy_density", "cosmic_ray_rate", "pointing_error_arcsec"):
            if getattr(self, name) < 0:
                raise DrpError(f"SurveyConfig.{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_preset(cls, preset: str, **options: Any) -> SurveyConfig:
        """A configuration from a preset with some options overridden."""
        return cls(preset=preset, **options)

    def replace(self, **options: Any) -> SurveyConfig:
        """A copy with some options changed."""
        return dataclasses.replace(self, **options)

    def camera_config(self) -> SimCamConfig:
        """The SimCam configuration of this survey's camera."""
        return SimCamConfig(n_detectors=self.n_detectors, nx=self.size, ny=self.size)

    def camera(self) -> SimCam:
        """This survey's camera."""
        return SimCam(self.camera_config())


def survey_rng(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    """The independent random stream of one purpose (and keys) of a survey seed."""
    return camera_rng(seed, "survey:" + purpose, *keys)
