"""Imports every concrete instrument module so that each registers itself by name."""

from __future__ import annotations

from . import decam, imagers, simcam  # noqa: F401
