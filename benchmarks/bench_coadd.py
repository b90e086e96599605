"""Benchmark warping + co-adding against SWarp on the same images, one sitting.

Run by hand (needs the Debian package ``swarp``); prints figures, asserts nothing::

    python benchmarks/bench_coadd.py                 # 8 x 2048^2 onto 2048^2 (FACTS anchor)
    python benchmarks/bench_coadd.py --inputs 4 --size 1024

The inputs are synthetic exposures of one star field (Gaussian PSFs of 1.6-2.3 px, Gaussian
noise), dithered by up to 40 px and rotated by 0-90 deg, TAN WCSs at 0.2"/px. Each tool co-adds
them onto the same 2048^2 TAN grid with Lanczos-3 and a weighted mean: drp through
``make_warp`` (one per input, in one process, one thread) and ``assemble_coadd`` (without and
with artifact rejection), SWarp with ``NTHREADS 1``. Flux fidelity: the box fluxes (25 x 25 px)
of isolated stars fully covered by every input, against their true fluxes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
)

from test_coadd_resample import gaussian_stars, tan_wcs  # noqa: E402

from repo.exposure import Exposure, PhotoCalib  # noqa: E402
from repo.psf import GaussianPsf  # noqa: E402
from stages.coadd.assemble import AssembleConfig, assemble_coadd  # noqa: E402
from stages.coadd.warp import make_warp  # noqa: E402
from stages.quality import swarp  # noqa: E402


def box_fluxes(image, x, y, half=12):
    return np.array(
        [
            np.nansum(image[int(b) - half : int(b) + half + 1, int(a) - half : int(a) + half + 1])
            for a, b in zip(x, y, strict=True)
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=8)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--stars", type=int, default=400)
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    shape = (args.size, args.size)
    ra0, dec0 = 150.0, 2.0
    out_wcs = tan_wcs(ra0, dec0, 0.0, shape)
    x = rng.uniform(80, args.size - 80, args.stars)
    y = rng.uniform(80, args.size - 80, args.stars)
    fluxes = 10 ** rng.uniform(3.5, 5.0, args.stars)
    ra, dec = out_wcs.pixel_to_world_values(x, y)
    images, wcss, exposures, noises = [], [], [], []
    for k in range(args.inputs):
        rotation = 90.0 * k / max(args.inputs - 1, 1)
        dx, dy = rng.uniform(-40, 40, 2)
        wcs = tan_wcs(ra0 + dx * 0.2 / 3600, dec0 + dy * 0.2 / 3600, rotation, shape)
        px, py = wcs.world_to_pixel_values(ra, dec)
        sigma, noise = 1.6 + 0.1 * k, 3.0 + 0.3 * k
        image = gaussian_stars(shape, px, py, fluxes, sigma) + rng.normal(0, noise, shape)
        images.append(image)
        wcss.append(wcs)
        noises.append(noise)
        exposures.append(
            Exposure(
                image=image.astype(np.float32),
                mask=np.zeros(shape, np.int32),
                variance=np.full(shape, noise**2, np.float32),
                wcs=wcs,
                psf=GaussianPsf(sigma, size=31),
                photo_calib=PhotoCalib(1.0),
            )
        )
    print(f"{args.inputs} inputs of {args.size}^2 onto {args.size}^2, Lanczos-3, weighted mean")
    with threadpool_limits(1):
        make_warp([(0, exposures[0])], out_wcs, shape, visit=0)  # compile / load numba code
        start = time.perf_counter()
        warps = {k: make_warp([(0, e)], out_wcs, shape, visit=k) for k, e in enumerate(exposures)}
        warp_seconds = time.perf_counter() - start
        start = time.perf_counter()
        plain = assemble_coadd(warps, AssembleConfig(reject_artifacts=False)).coadd
        plain_seconds = time.perf_counter() - start
        start = time.perf_counter()
        clipped = assemble_coadd(warps).coadd
        clipped_seconds = time.perf_counter() - start
    theirs = swarp.swarp_coadd(
        images, [np.full(shape, 1 / n**2) for n in noises], wcss, out_wcs, shape, threads=1
    )
    covered = np.ones(x.size, bool)
    for warp in warps.values():
        no_data = ~np.isfinite(warp.image)
        covered &= [
            not no_data[int(b) - 12 : int(b) + 13, int(a) - 12 : int(a) + 13].any()
            for a, b in zip(x, y, strict=True)
        ]
    separation = np.hypot(x[:, None] - x, y[:, None] - y) + np.eye(x.size) * 1e9
    covered &= separation.min(axis=1) > 25
    truth = fluxes[covered]
    print(f"  drp warps:   {warp_seconds:6.2f} s ({warp_seconds / args.inputs:.2f} s each)")
    print(
        f"  drp co-add:  {plain_seconds:6.2f} s weighted mean, {clipped_seconds:.2f} s with rejection"
    )
    print(
        f"  drp total:   {warp_seconds + plain_seconds:6.2f} s ({warp_seconds + clipped_seconds:.2f} s with rejection)"
    )
    print(f"  SWarp:       {theirs.seconds:6.2f} s (1 thread, wall, including its FITS I/O)")
    for name, image in (
        ("drp", plain.image),
        ("drp+reject", clipped.image),
        ("SWarp", theirs.image),
    ):
        ratio = box_fluxes(image, x[covered], y[covered]) / truth
        print(
            f"  {name:<11} flux / truth over {covered.sum()} stars: median {np.median(ratio):.5f}, "
            f"rms {np.std(ratio):.5f}"
        )


if __name__ == "__main__":
    main()
