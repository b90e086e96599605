"""The co-add stages::

    calexp (every detector of a visit) --makeWarp--> deepCoadd_warp (tract, patch, visit)
    deepCoadd_warp (every visit of a band) --assembleCoadd--> deepCoadd (tract, patch, band)

``makeWarp`` resamples each calexp that overlaps a patch onto the patch's outer box
(:mod:`.warp`, Lanczos-3 through :mod:`.resample`) in nJy; ``assembleCoadd`` takes the weighted
mean with artifact rejection and the co-add PSF (:mod:`.assemble`). A co-add's FITS has the
patch's WCS (the tract's TAN with the patch offset), its PSF table lists every input (visit,
detector, weight), and ``deepCoadd_inputs`` has the same list as a catalog for SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from repo.errors import DrpError
from stages.calibrate.stages import CALEXP
from stages.framework.base import Connection, Stage

from .assemble import AssembleConfig, assemble_coadd
from .coadd_psf import CoaddPsf
from .resample import DEFAULT_GRID_STEP
from .warp import make_warp

WARP_DIMS = ("instrument", "visit", "skymap", "tract", "patch")
COADD_DIMS = ("skymap", "tract", "patch", "band")

WARP = Connection(
    "deepCoadd_warp", WARP_DIMS, "Exposure", doc="one visit resampled onto a patch, nJy"
)
COADD = Connection("deepCoadd", COADD_DIMS, "Exposure", doc="co-add of a patch and band, nJy")
COADD_INPUTS = Connection(
    "deepCoadd_inputs", COADD_DIMS, "Catalog", doc="visit, detector and weight of each input"
)


@dataclass(frozen=True)
class MakeWarpConfig:
    """Configuration of ``makeWarp``.

    Attributes
    ----------
    grid_step : int
        Output pixels between nodes of the exactly computed mapping (:mod:`.resample`).
    """

    grid_step: int = DEFAULT_GRID_STEP


class MakeWarpStage(Stage):
    """One visit's calexps resampled onto a patch (see :mod:`.warp`)."""

    dimensions = WARP_DIMS
    inputs = {
        "calexps": Connection(CALEXP.dataset_type, CALEXP.dimensions, "Exposure", multiple=True)
    }
    outputs = {"warp": WARP}
    config_class = MakeWarpConfig

    def run(self, calexps: dict, data_id: Any, skymap: Any) -> dict[str, Any]:
        patch = skymap.patch(int(data_id["tract"]), int(data_id["patch"]))
        shape = (patch.bbox[3], patch.bbox[2])
        by_detector = [(int(key["detector"]), exposure) for key, exposure in calexps.items()]
        warp = make_warp(
            by_detector,
            patch.wcs,
            shape,
            visit=int(data_id["visit"]),
            band=str(data_id.get("band", "") or ""),
            step=self.config.grid_step,
        )
        if warp is None:
            raise DrpError(
                f"makeWarp {data_id}: no calexp pixel lands on the patch (its region overlaps "
                "the patch, its pixels do not)"
            )
        return {"warp": warp}


class AssembleCoaddStage(Stage):
    """The warps of a patch and band co-added (see :mod:`.assemble`)."""

    dimensions = COADD_DIMS
    inputs = {"warps": Connection(WARP.dataset_type, WARP.dimensions, "Exposure", multiple=True)}
    outputs = {"coadd": COADD, "inputs": COADD_INPUTS}
    config_class = AssembleConfig

    def run(self, warps: dict, data_id: Any) -> dict[str, Any]:
        by_visit = {int(key["visit"]): warp for key, warp in warps.items()}
        result = assemble_coadd(by_visit, self.config, band=str(data_id["band"]))
        psf = result.coadd.psf
        rows = psf.inputs if isinstance(psf, CoaddPsf) else ()
        table = pa.table(
            {
                "visit": pa.array([r.visit for r in rows], pa.int64()),
                "detector": pa.array([r.detector for r in rows], pa.int64()),
                "weight": pa.array([r.weight for r in rows], pa.float64()),
                "clipped_pixels": pa.array(
                    [result.clipped_pixels.get(r.visit, 0) for r in rows], pa.int64()
                ),
            }
        )
        return {"coadd": result.coadd, "inputs": table}
