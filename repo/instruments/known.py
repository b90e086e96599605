"""Imports every concrete instrument module so that each registers itself by name."""

from __future__ import annotations

import contextlib
import importlib

for _module in ("repo.instruments.simcam", "repo.instruments.decam"):
    # A module that is not written yet is simply not registered.
    with contextlib.suppress(ModuleNotFoundError):
        importlib.import_module(_module)
