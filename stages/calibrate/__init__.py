"""Calibration against a reference catalog: matching, the astrometric (WCS) fit and the
photometric zero point; the single-frame calibrate stage."""
