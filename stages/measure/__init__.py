"""Detection and measurement of sources (centroids, moments, aperture, Kron and PSF fluxes),
star/galaxy classification and aperture corrections; shared by single-frame and co-add
measurement."""
