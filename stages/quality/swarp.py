"""SWarp (Bertin 2002) as a peer: the same images co-added by it, for flux and speed comparisons.

:func:`swarp_coadd` writes images and weight maps as FITS, an output header (the target WCS and
size) as SWarp's ``.head`` file, runs ``SWarp`` with Lanczos-3 resampling and a weighted mean
(no background subtraction, flux scaled by the pixel area, one thread unless asked), and reads
the co-add back. Used by ``benchmarks/bench_coadd.py`` and the co-add tests; SWarp is the Debian
package ``swarp`` (executable ``SWarp``).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from repo.errors import DrpError

EXECUTABLE = "SWarp"


@dataclass
class SwarpResult:
    """SWarp's co-add and weight map, and the seconds its run took."""

    image: np.ndarray
    weight: np.ndarray
    seconds: float


def available() -> bool:
    """Whether the SWarp executable is on the PATH."""
    return shutil.which(EXECUTABLE) is not None


def swarp_coadd(
    images: Sequence[np.ndarray],
    weights: Sequence[np.ndarray],
    wcss: Sequence[WCS],
    output_wcs: WCS,
    output_shape: tuple[int, int],
    *,
    threads: int = 1,
    workdir: str | None = None,
) -> SwarpResult:
    """Co-add images (with inverse-variance weight maps) onto ``output_wcs`` with SWarp.

    Raises
    ------
    DrpError
        If SWarp is not installed or fails (its stderr is in the message).
    """
    if not available():
        raise DrpError("SWarp is not installed (Debian package swarp)")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        folder = Path(tmp)
        names = []
        for k, (image, weight, wcs) in enumerate(zip(images, weights, wcss, strict=True)):
            header = wcs.to_header(relax=True)
            fits.PrimaryHDU(np.asarray(image, np.float32), header).writeto(folder / f"in{k}.fits")
            fits.PrimaryHDU(np.asarray(weight, np.float32), header).writeto(
                folder / f"in{k}.weight.fits"
            )
            names.append(f"in{k}.fits")
        header = output_wcs.to_header(relax=True)
        header["NAXIS"] = 2
        header["NAXIS1"] = output_shape[1]
        header["NAXIS2"] = output_shape[0]
        (folder / "coadd.head").write_text(
            "\n".join(card.image.rstrip() for card in header.cards) + "\nEND\n"
        )
        command = [
            EXECUTABLE,
            *names,
            "-IMAGEOUT_NAME", "coadd.fits",
            "-WEIGHTOUT_NAME", "coadd.weight.fits",
            "-WEIGHT_TYPE", "MAP_WEIGHT",
            "-WEIGHT_SUFFIX", ".weight.fits",
            "-COMBINE_TYPE", "WEIGHTED",
            "-RESAMPLING_TYPE", "LANCZOS3",
            "-SUBTRACT_BACK", "N",
            "-FSCALASTRO_TYPE", "FIXED",
            "-FSCALE_KEYWORD", "NONE",
            "-FSCALE_DEFAULT", "1.0",
            "-NTHREADS", str(threads),
            "-RESAMPLE_DIR", str(folder),
            "-VERBOSE_TYPE", "QUIET",
            "-WRITE_XML", "N",
            "-DELETE_TMPFILES", "Y",
        ]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise DrpError(f"SWarp failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        with fits.open(folder / "coadd.fits") as hdul:
            image = np.array(hdul[0].data, np.float64)
        with fits.open(folder / "coadd.weight.fits") as hdul:
            weight = np.array(hdul[0].data, np.float64)
    return SwarpResult(image, weight, seconds)
