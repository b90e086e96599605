"""Instrument signature removal: master calibrations (bias, dark, flat, defects) and the
correction of raw exposures with them."""
