"""Sky background: sep's mesh-and-filter estimate, as a small serializable model, and its removal.

The background is SExtractor's (through sep): the image is cut into ``mesh`` x ``mesh`` boxes, each
box's background is a clipped mode estimate of its unmasked pixels, the box values are
median-filtered over ``filter_size`` x ``filter_size`` boxes, and the map is a bicubic natural
spline through the box values. With sep's defaults this is SExtractor's ``BACKGROUND`` check-image
exactly (see ``tests/test_background.py`` on the NTT image).

The stored model is the spline's nodes (one value and one rms per box, with the box geometry):
:class:`BackgroundModel` rebuilds the full-resolution map from them (:meth:`BackgroundModel.image`)
to float32 precision of sep's own map, and converts to and from an astropy Table
(:func:`background_to_table`, :func:`background_from_table`) for the repository.

Node positions follow SExtractor: box ``j`` along x is centred on pixel ``(j + 0.5) * bw - 0.5``
and box ``i`` along y on pixel row ``(i + 0.5) * bh`` (sep's interpolation grid along y is offset
by half a pixel from that along x). Beyond the first and last nodes the end cubic is extrapolated.

Pixels of the masked planes (``BAD``, ``SAT``, ``CR``, ``INTRP``, ``NO_DATA``, ``DETECTED`` by
default) are excluded. Optionally (``source_sigma``) a first estimate is used to find sources
(:func:`source_mask`: a smoothed excess above ``source_sigma``, grown by ``source_grow``
pixels), which are excluded as well, and the background is estimated again, so that the wings
of sources do not raise it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import sep
from astropy.table import Table
from scipy import ndimage

from repo.errors import CorruptDatasetError, DrpError
from repo.exposure import Exposure

#: Mask planes excluded from the background estimate by default.
BACKGROUND_MASK_PLANES = ("BAD", "SAT", "CR", "INTRP", "NO_DATA", "DETECTED")

#: The source-masked second pass is skipped if it would leave less than half of the pixels.
MAX_MASKED_FRACTION = 0.5

#: Version of the table layout written by :func:`background_to_table`.
TABLE_VERSION = 1


def _node_positions(n_boxes: int, box: int, offset: float) -> np.ndarray:
    return (np.arange(n_boxes) + 0.5) * box - offset


def _axis_matrix(n_pixels: int, box: int, offset: float) -> np.ndarray:
    n_boxes = (n_pixels - 1) // box + 1
    return spline_matrix(n_boxes, box, 0.5 * box - offset, np.arange(n_pixels))


def _sextractor_curvatures(n: int) -> np.ndarray:
    """Matrix ``C`` (n x n) giving SExtractor's spline coefficients ``d = C @ values``.

    SExtractor (``makebackspline``, ``backline``) solves the natural-spline system for unit
    node spacing and divides by 6 during the back-substitution, reusing the already divided
    coefficient of the next node; this reproduces that recurrence exactly (it is linear in the
    node values, so it is applied to the identity).
    """
    values = np.eye(n)
    d = np.zeros((n, n))
    u = np.zeros((n, n))
    pivots = np.zeros(n)
    for i in range(1, n - 1):
        pivots[i] = -1.0 / (pivots[i - 1] + 4.0)
        u[i] = pivots[i] * (u[i - 1] - 6.0 * (values[i + 1] + values[i - 1] - 2.0 * values[i]))
    for i in range(n - 2, 0, -1):
        d[i] = (pivots[i] * d[i + 1] + u[i]) / 6.0
    return d


def spline_matrix(n_nodes: int, box: int, first_node: float, positions: np.ndarray) -> np.ndarray:
    """Matrix ``S`` (len(positions) x n_nodes): SExtractor's spline values ``S @ node_values``.

    Nodes are ``box`` pixels apart starting at pixel ``first_node``; with one node the map is
    constant, with two it is linear; beyond the end nodes the end cubics are extrapolated.
    """
    positions = np.asarray(positions, dtype=np.float64)
    if n_nodes == 1:
        return np.ones((positions.size, 1))
    t = (positions - first_node) / box
    k = np.clip(np.floor(t).astype(int), 0, n_nodes - 2)
    d = t - k
    c = 1.0 - d
    rows = np.arange(positions.size)
    out = np.zeros((positions.size, n_nodes))
    np.add.at(out, (rows, k), c)
    np.add.at(out, (rows, k + 1), d)
    curv = _sextractor_curvatures(n_nodes)
    out += (c**3 - c)[:, None] * curv[k] + (d**3 - d)[:, None] * curv[k + 1]
    return out


@dataclass
class BackgroundModel:
    """A mesh background: the spline nodes of the background and its rms, and the geometry.

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)`` of the image.
    mesh : tuple of int
        Box size ``(bh, bw)`` in pixels.
    filter_size : tuple of int
        Median filter size in boxes ``(fh, fw)``.
    back, rms : numpy.ndarray
        ``(n_boxes_y, n_boxes_x)`` node values of the background and of its rms.
    global_back, global_rms : float
        sep's global background and rms (medians over the boxes).
    """

    shape: tuple[int, int]
    mesh: tuple[int, int]
    filter_size: tuple[int, int]
    back: np.ndarray
    rms: np.ndarray
    global_back: float
    global_rms: float

    def __post_init__(self) -> None:
        ny, nx = (int(v) for v in self.shape)
        bh, bw = (int(v) for v in self.mesh)
        if ny < 1 or nx < 1 or bh < 1 or bw < 1:
            raise DrpError(f"background model: bad shape {self.shape} or mesh {self.mesh}")
        expected = ((ny - 1) // bh + 1, (nx - 1) // bw + 1)
        self.shape, self.mesh = (ny, nx), (bh, bw)
        self.filter_size = (int(self.filter_size[0]), int(self.filter_size[1]))
        self.back = np.asarray(self.back, dtype=np.float64)
        self.rms = np.asarray(self.rms, dtype=np.float64)
        if self.back.shape != expected or self.rms.shape != expected:
            raise DrpError(
                f"background model: nodes {self.back.shape}/{self.rms.shape} do not match "
                f"{expected} boxes of {self.mesh} on an image of {self.shape}"
            )

    def _matrices(self) -> tuple[np.ndarray, np.ndarray]:
        (ny, nx), (bh, bw) = self.shape, self.mesh
        return _axis_matrix(ny, bh, 0.0), _axis_matrix(nx, bw, 0.5)

    def image(self) -> np.ndarray:
        """The background map (float32, ``shape``)."""
        sy, sx = self._matrices()
        return (sy @ self.back @ sx.T).astype(np.float32)

    def rms_image(self) -> np.ndarray:
        """The background rms map (float32, ``shape``)."""
        sy, sx = self._matrices()
        return (sy @ self.rms @ sx.T).astype(np.float32)

    @classmethod
    def from_sep(
        cls, bkg: sep.Background, shape: tuple[int, int], mesh: tuple[int, int], filter_size
    ) -> BackgroundModel:
        """The nodes of a ``sep.Background``, recovered from its maps by least squares.

        sep keeps its nodes private; its maps are ``S_y @ nodes @ S_x.T`` with the spline
        matrices of :func:`spline_matrix`, so the nodes are recovered (to sep's float32
        rounding) with their pseudo-inverses.
        """
        ny, nx = shape
        bh, bw = mesh
        sy, sx = _axis_matrix(ny, bh, 0.0), _axis_matrix(nx, bw, 0.5)
        # A sample of rows and columns (at least 8 per box) determines the nodes.
        rows = np.arange(0, ny, max(1, bh // 8))
        cols = np.arange(0, nx, max(1, bw // 8))
        py, px = np.linalg.pinv(sy[rows]), np.linalg.pinv(sx[cols])
        back = py @ bkg.back()[np.ix_(rows, cols)].astype(np.float64) @ px.T
        rms = py @ bkg.rms()[np.ix_(rows, cols)].astype(np.float64) @ px.T
        return cls(shape, mesh, filter_size, back, rms, bkg.globalback, bkg.globalrms)


def background_of_image(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    mesh: int | tuple[int, int] = 64,
    filter_size: int | tuple[int, int] = 3,
    filter_threshold: float = 0.0,
) -> BackgroundModel:
    """sep's background of an array (``mask``: True where pixels are excluded).

    Parameters
    ----------
    image : numpy.ndarray
        2-D image.
    mask : numpy.ndarray, optional
        Boolean mask of pixels to ignore.
    mesh : int or (int, int)
        Box size (``BACK_SIZE``): square, or ``(height, width)``.
    filter_size : int or (int, int)
        Median filter size in boxes (``BACK_FILTERSIZE``).
    filter_threshold : float
        sep's ``fthresh`` (``BACK_FILTTHRESH``).
    """
    data = np.ascontiguousarray(image, dtype=np.float32)
    if data.ndim != 2:
        raise DrpError(f"background: image must be 2-D, got {data.ndim}-D")
    bh, bw = (mesh, mesh) if np.isscalar(mesh) else mesh
    fh, fw = (filter_size, filter_size) if np.isscalar(filter_size) else filter_size
    if min(bh, bw, fh, fw) < 1:
        raise DrpError(f"background: mesh {mesh} and filter size {filter_size} must be >= 1")
    kwargs: dict[str, Any] = {"bw": int(bw), "bh": int(bh), "fw": int(fw), "fh": int(fh)}
    kwargs["fthresh"] = float(filter_threshold)
    if mask is not None:
        mask = np.ascontiguousarray(mask, dtype=bool)
        if mask.shape != data.shape:
            raise DrpError(f"background: mask {mask.shape} and image {data.shape} differ")
        kwargs["mask"] = mask
    try:
        bkg = sep.Background(data, **kwargs)
    except Exception as exc:  # sep raises plain Exceptions with the C library's message
        raise DrpError(f"background estimation failed: {exc}") from None
    return BackgroundModel.from_sep(bkg, data.shape, (int(bh), int(bw)), (int(fh), int(fw)))


def clipped_mean_background(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    mesh: int | tuple[int, int] = 64,
    filter_size: int | tuple[int, int] = 3,
    clip: float = 3.5,
    iterations: int = 4,
    min_fraction: float = 0.1,
    start: BackgroundModel | None = None,
) -> BackgroundModel:
    """A mesh background whose boxes take the sigma-clipped mean of their unmasked pixels.

    sep's (SExtractor's) box value is a mode estimate, ``2.5 median - 1.5 mean``: robust in
    crowded boxes, but it estimates the mode, and photometry needs the mean. Sky pixels are
    Poisson, skewed by ``1 / sqrt(sky)``, so the mode estimate is low by about ``0.4`` electron
    per pixel whatever the sky level (``tests/test_background.py``), which over a 12-pixel
    aperture is 200 electrons. Here each box starts at its median and MAD (or at the nodes of
    ``start``, a model on the same boxes such as sep's, which saves the medians), and
    ``iterations`` times keeps the pixels within ``clip`` standard deviations of the centre and
    takes their mean and standard deviation. A symmetric clip of a skewed distribution cuts
    more of its upper tail: at 3 sigma that leaves -0.03 to -0.08 electron on Poisson skies of
    300-2300 electrons, at 3.5 sigma under 0.01. Unlike the mode, the mean follows the
    sources in a box, so they must be masked (:func:`estimate_background` with a
    ``source_sigma`` high enough, 5, not to mask noise peaks, which would bias it low
    again). Boxes with fewer than
    ``min_fraction`` unmasked pixels take the value of the nearest good box. The box values are
    median filtered over ``filter_size`` boxes (edges replicated) and interpolated with the
    same spline as sep's (:class:`BackgroundModel`).
    """
    data = np.asarray(image, dtype=np.float32)
    if data.ndim != 2:
        raise DrpError(f"background: image must be 2-D, got {data.ndim}-D")
    bh, bw = (mesh, mesh) if np.isscalar(mesh) else mesh
    fh, fw = (filter_size, filter_size) if np.isscalar(filter_size) else filter_size
    if min(bh, bw, fh, fw) < 1:
        raise DrpError(f"background: mesh {mesh} and filter size {filter_size} must be >= 1")
    ny, nx = data.shape
    nby, nbx = (ny - 1) // bh + 1, (nx - 1) // bw + 1
    padded = np.full((nby * bh, nbx * bw), np.nan, dtype=np.float32)
    padded[:ny, :nx] = data if mask is None else np.where(mask, np.nan, data)
    boxes = padded.reshape(nby, bh, nbx, bw).transpose(0, 2, 1, 3).reshape(nby, nbx, bh * bw)
    valid = np.isfinite(boxes)
    good = valid.sum(axis=2) >= max(3, min_fraction * bh * bw)
    if not good.any():
        raise DrpError("background: every box is masked")
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN boxes are handled below
        if start is not None and start.back.shape == (nby, nbx):
            centre, spread = start.back.copy(), start.rms.copy()
        else:
            centre = np.nanmedian(boxes, axis=2)
            spread = 1.4826 * np.nanmedian(np.abs(boxes - centre[..., None]), axis=2)
        values = np.where(valid, boxes, 0.0).astype(np.float64)
        for _ in range(iterations):
            keep = valid & (np.abs(boxes - centre[..., None]) <= clip * spread[..., None])
            n = np.maximum(keep.sum(axis=2), 1)
            centre = np.where(keep, values, 0.0).sum(axis=2) / n
            second = np.where(keep, (values - centre[..., None]) ** 2, 0.0).sum(axis=2) / n
            spread = np.sqrt(second)
    # Bad boxes take the nearest good box's values.
    _, (iy, ix) = ndimage.distance_transform_edt(~good, return_indices=True)
    centre, spread = centre[iy, ix], spread[iy, ix]
    back = ndimage.median_filter(centre, size=(int(fh), int(fw)), mode="nearest")
    rms = ndimage.median_filter(spread, size=(int(fh), int(fw)), mode="nearest")
    return BackgroundModel(
        (ny, nx), (int(bh), int(bw)), (int(fh), int(fw)), back, rms,
        float(np.median(back)), float(np.median(rms)),
    )  # fmt: skip


#: Box estimators of :func:`estimate_background`: sep's mode, or the clipped mean.
BACKGROUND_ESTIMATORS = ("mode", "clipped_mean")


def estimate_background(
    exposure: Exposure,
    mesh: int | tuple[int, int] = 64,
    filter_size: int | tuple[int, int] = 3,
    mask_planes: tuple[str, ...] = BACKGROUND_MASK_PLANES,
    source_sigma: float | None = None,
    source_grow: int = 3,
    estimator: str = "mode",
) -> tuple[BackgroundModel, np.ndarray]:
    """The background of an exposure, its masked pixels (and optionally its sources) excluded.

    Parameters
    ----------
    exposure : repo.exposure.Exposure
        The image (after ISR and cosmic-ray repair).
    mesh, filter_size : int or (int, int)
        Box size in pixels and median filter size in boxes.
    mask_planes : tuple of str
        Planes whose pixels are excluded (planes the exposure lacks are ignored).
    source_sigma : float or None
        If set, a second pass also excludes the sources found ``source_sigma`` above the first
        estimate (:func:`source_mask`), unless that would mask more than half of the image
        (None: one pass, sep alone).
    source_grow : int
        Growth (pixels) of the source mask.
    estimator : str
        The final pass's box value: ``"mode"`` (sep's, SExtractor's) or ``"clipped_mean"``
        (:func:`clipped_mean_background`); the first pass, which finds the sources, is sep's.

    Returns
    -------
    model : BackgroundModel
        The serializable model.
    background : numpy.ndarray
        Its float32 map.
    """
    if estimator not in BACKGROUND_ESTIMATORS:
        raise DrpError(f"background: estimator {estimator!r} is not one of {BACKGROUND_ESTIMATORS}")
    planes = [p for p in mask_planes if p in exposure.mask_planes]
    masked = (exposure.mask & exposure.bits(*planes)) != 0 if planes else None
    model = background_of_image(exposure.image, masked, mesh, filter_size)
    final = masked
    if source_sigma is not None:
        sources = source_mask(
            exposure.image - model.image(), model.rms_image(), source_sigma, source_grow
        )
        combined = sources if masked is None else (sources | masked)
        if combined.mean() < MAX_MASKED_FRACTION:
            final = combined
            if estimator == "mode":
                model = background_of_image(exposure.image, combined, mesh, filter_size)
    if estimator == "clipped_mean":
        model = clipped_mean_background(exposure.image, final, mesh, filter_size, start=model)
    return model, model.image()


def source_mask(
    excess: np.ndarray, rms: np.ndarray, nsigma: float, grow: int, box: int = 5
) -> np.ndarray:
    """Pixels of sources: the ``box`` x ``box`` mean of ``excess`` above ``nsigma`` times its
    noise (``rms / box`` for independent pixels), grown by ``grow`` pixels.

    Smoothing before thresholding finds the faint wings of sources without flagging single
    noise peaks.
    """
    smoothed = ndimage.uniform_filter(np.asarray(excess, dtype=np.float32), box, mode="nearest")
    sources = smoothed > nsigma * np.asarray(rms) / box
    if grow:
        sources = ndimage.binary_dilation(sources, iterations=int(grow))
    return sources


def subtract_background(exposure: Exposure, background: BackgroundModel | np.ndarray) -> None:
    """Subtract a background (model or map) from the exposure's image in place.

    Records ``BGMEAN`` (mean of the map subtracted) in the metadata.
    """
    level = background.image() if isinstance(background, BackgroundModel) else background
    level = np.asarray(level)
    if level.shape != exposure.shape:
        raise DrpError(f"background {level.shape} and exposure {exposure.shape} differ in shape")
    exposure.image -= level.astype(exposure.image.dtype)
    exposure.metadata["BGMEAN"] = float(np.mean(level))


def background_to_table(model: BackgroundModel) -> Table:
    """The model as a table: one row per box (``i``, ``j``, centre ``x``, ``y``, ``back``,
    ``rms``) with the geometry in ``meta``."""
    n_y, n_x = model.back.shape
    ii, jj = np.mgrid[0:n_y, 0:n_x]
    table = Table(
        {
            "i": ii.ravel().astype(np.int32),
            "j": jj.ravel().astype(np.int32),
            "x": _node_positions(n_x, model.mesh[1], 0.5)[jj.ravel()],
            "y": _node_positions(n_y, model.mesh[0], 0.0)[ii.ravel()],
            "back": model.back.ravel(),
            "rms": model.rms.ravel(),
        }
    )
    table.meta.update(
        {
            "BGVERSN": TABLE_VERSION,
            "NY": model.shape[0],
            "NX": model.shape[1],
            "MESH_H": model.mesh[0],
            "MESH_W": model.mesh[1],
            "FILT_H": model.filter_size[0],
            "FILT_W": model.filter_size[1],
            "GLOBBACK": float(model.global_back),
            "GLOBRMS": float(model.global_rms),
        }
    )
    return table


def background_from_table(table: Table) -> BackgroundModel:
    """Rebuild a :class:`BackgroundModel` from :func:`background_to_table` output."""
    meta = {k.upper(): v for k, v in table.meta.items()}
    try:
        if int(meta["BGVERSN"]) != TABLE_VERSION:
            raise CorruptDatasetError(f"background table version {meta['BGVERSN']} unknown")
        shape = (int(meta["NY"]), int(meta["NX"]))
        mesh = (int(meta["MESH_H"]), int(meta["MESH_W"]))
        n_y, n_x = (shape[0] - 1) // mesh[0] + 1, (shape[1] - 1) // mesh[1] + 1
        i = np.asarray(table["i"], dtype=int)
        j = np.asarray(table["j"], dtype=int)
        back = np.full((n_y, n_x), np.nan)
        rms = np.full((n_y, n_x), np.nan)
        back[i, j] = np.asarray(table["back"], dtype=float)
        rms[i, j] = np.asarray(table["rms"], dtype=float)
        if len(table) != n_y * n_x or np.isnan(back).any():
            raise CorruptDatasetError(f"background table must have {n_y * n_x} distinct boxes")
        return BackgroundModel(
            shape,
            mesh,
            (int(meta["FILT_H"]), int(meta["FILT_W"])),
            back,
            rms,
            float(meta["GLOBBACK"]),
            float(meta["GLOBRMS"]),
        )
    except (KeyError, IndexError, ValueError, DrpError) as exc:
        if isinstance(exc, CorruptDatasetError):
            raise
        raise CorruptDatasetError(f"malformed background table ({exc})") from None
