"""Characterizing an exposure: cosmic rays, the sky background and the PSF model (optical part
from the camera, atmospheric part fitted on stars)."""
