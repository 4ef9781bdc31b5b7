"""A site's local round on several data-parallel processes (node config ``gpus = W``; D16).

The launching process (the ClientApp, after the policy check and, under DP, the ledger reservation, both once
per round: :func:`xr0_core.site.round.run_parallel_site_round`) hands the round to ``W`` ranks:

1. a private folder (``mkdtemp``: mode 0700, inside the site's state folder, removed afterwards) receives the
   round's inputs: ``job.json`` (run config, site name, round spec, state folder, the training records and how
   to reopen their images, the reserved DP terms) and ``weights.safetensors`` (the global weights);
2. ``python -m torch.distributed.run --standalone --nproc-per-node W -m xr0_core.site.launch.rank <folder>``:
   every rank loads the global weights and the site's state, trains its share (:mod:`xr0_core.train.distributed`;
   DP-SGD across ranks: :mod:`xr0_core.train.dp_ranks`); rank 0 saves the site's state and writes
   ``shared.safetensors`` and ``result.json`` (metrics, DP steps run);
3. the launcher reads them back. A rank that fails makes torchrun stop the others; the launcher raises
   :class:`ParallelRoundError` (the ranks' output goes to the site log, not into the message that leaves), so
   nothing is committed as trained: a reserved private round stays charged (pending), as after any crash.

Why a torchrun subprocess rather than ``torch.multiprocessing.spawn`` from the ClientApp's process: the ranks
start from a clean interpreter (the ClientApp may live in a Ray actor or a Flower process whose ``__main__``
a spawned child would re-import), torchrun owns rendezvous, ``LOCAL_RANK`` and the all-or-nothing failure
handling, and it is the launcher a hospital's IT already knows.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from xr0_core.config import XR0Config

log = logging.getLogger(__name__)

JOB, WEIGHTS, SHARED, RESULT, RANKS_LOG = "job.json", "weights.safetensors", "shared.safetensors", "result.json", \
    "ranks.log"
LOG_TAIL = 6000  # characters of the ranks' output copied into the site log on failure


class ParallelRoundError(RuntimeError):
    """The data-parallel round could not run or a rank failed; the message says what to change."""


def check_workers(cfg: XR0Config, workers: int, *, private: bool) -> None:
    """Refuse, before anything is charged, a process count this machine or round cannot run.

    CUDA training needs one visible GPU per rank; CPU training (tests, a GPU-less site) runs ``W`` gloo
    processes. Without DP the fixed batch is split in equal blocks, so it must be a multiple of ``W`` (under DP
    the Poisson-sampled units are split whole, in shares that may differ).
    """
    if not isinstance(workers, int) or workers < 1:
        raise ParallelRoundError(f"node config gpus = {workers!r}: give a whole number of processes >= 1")
    from xr0_core.runtime import resolve_device

    device = resolve_device(cfg.train.device)
    if device.type == "cuda" and workers > torch.cuda.device_count():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise ParallelRoundError(
            f"node config gpus = {workers} but this machine shows {torch.cuda.device_count()} CUDA device(s)"
            + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else "")
            + ": lower gpus, or make more GPUs visible to the SuperNode")
    if not private and cfg.train.batch_size % workers:
        raise ParallelRoundError(f"train.batch-size {cfg.train.batch_size} must be a multiple of node config "
                                 f"gpus = {workers} (each process trains an equal block of the batch)")


# ------------------------------------------------------------------------------------------- records as JSON
def record_to_json(record: Any) -> dict:
    """A :class:`~xr0_core.data.manifest.SiteRecord` as JSON-able fields (paths as strings)."""
    from xr0_core.data.manifest import SiteRecord

    if not isinstance(record, SiteRecord):
        raise ParallelRoundError(f"a data-parallel round needs the site's SiteRecords, got {type(record).__name__}")
    out = dataclasses.asdict(record)
    out["path"] = str(record.path)
    out["mask_path"] = str(record.mask_path) if record.mask_path is not None else None
    return out


def record_from_json(d: Mapping[str, Any]):
    """Inverse of :func:`record_to_json` (tuples restored, so records compare equal)."""
    from xr0_core.data.manifest import SiteRecord

    d = dict(d)
    d["path"] = Path(d["path"])
    d["mask_path"] = Path(d["mask_path"]) if d.get("mask_path") is not None else None
    if d.get("landmarks") is not None:
        d["landmarks"] = tuple(tuple(p) for p in d["landmarks"])
    if d.get("boxes") is not None:
        d["boxes"] = tuple({**b, "box": tuple(b["box"])} if "box" in b else dict(b) for b in d["boxes"])
    return SiteRecord(**d)


def images_spec(images) -> dict:
    """How a rank reopens the launcher's image source: the prepared folder, or decode into its own RAM."""
    from xr0_core.data.dataset import ImageCache
    from xr0_core.data.prepared import PreparedImages

    if isinstance(images, PreparedImages):
        return {"kind": "prepared", "folder": str(images.folder)}
    if isinstance(images, ImageCache):
        return {"kind": "ram", "load_size": int(images.load_size)}
    raise ParallelRoundError(f"cannot hand a {type(images).__name__} image source to data-parallel processes")


def reopen_images(spec: Mapping[str, Any], records: list) -> Any:
    """The rank's image source over ``records`` (the launcher's kept records, in order).

    Raises
    ------
    ParallelRoundError
        An image the launcher served is no longer readable (the site's data changed during the round).
    """
    from xr0_core.data.dataset import ImageCache
    from xr0_core.data.prepared import PreparedImages

    if spec["kind"] == "prepared":  # the launcher brought the folder up to date: only read it here
        images = PreparedImages(records, spec["folder"])
    else:
        images = ImageCache(records, int(spec["load_size"]), progress=False).decode()
    if len(images.kept) != len(records):
        raise ParallelRoundError(f"{len(records) - len(images.kept)} of the round's images could not be read by a "
                                 "data-parallel process: the site's data changed during the round; rerun it")
    return images


# ------------------------------------------------------------------------------------------------- launch
def launch_round(cfg: XR0Config, images, global_weights: Mapping[str, torch.Tensor], spec, state_dir: Path, *,
                 site: str, workers: int, dp: Mapping[str, float] | None = None,
                 progress: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, float], int]:
    """Run one local round on ``workers`` processes and read back rank 0's results.

    Parameters
    ----------
    images : ImageSource
        The launcher's training images (their ``kept`` records are handed to the ranks).
    spec : xr0_core.train.round_state.RoundSpec
    dp : dict, optional
        ``noise_multiplier``, ``sample_rate``, ``n_units`` of the reserved private round (None: no DP-SGD).

    Returns
    -------
    shared : dict[str, Tensor]
        Rank 0's shared weights after the round (float32, CPU).
    metrics : dict[str, float]
        The trainer's metrics (averaged over ranks).
    dp_steps : int
        DP-SGD steps the ranks ran (0 without DP).

    Raises
    ------
    ParallelRoundError
        torchrun or a rank failed (exit code in the message, the ranks' output in the site log).
    """
    from safetensors.torch import load_file, save_file

    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".xr0-parallel-round-", dir=state_dir))  # mode 0700
    try:
        job = {"run_config": cfg.to_flat(), "site": site, "spec": dataclasses.asdict(spec),
               "state_dir": str(state_dir), "images": images_spec(images),
               "records": [record_to_json(r) for r in images.kept], "dp": dict(dp) if dp else None,
               "progress": bool(progress)}
        (folder / JOB).write_text(json.dumps(job))
        save_file({k: v.detach().float().cpu().contiguous() for k, v in global_weights.items()},
                  str(folder / WEIGHTS))
        rc = _run_torchrun(folder, workers)
        if rc != 0 or not (folder / RESULT).is_file():
            text = (folder / RANKS_LOG).read_text(errors="replace") if (folder / RANKS_LOG).is_file() else ""
            log.error("data-parallel round on %d processes failed (exit code %s); output of the ranks:\n%s",
                      workers, rc, text[-LOG_TAIL:])
            raise ParallelRoundError(f"the site's data-parallel round on {workers} processes failed (torchrun exit "
                                     f"code {rc}); the ranks' output is in the site log")
        result = json.loads((folder / RESULT).read_text())
        shared = load_file(str(folder / SHARED))
        return shared, {k: float(v) for k, v in result["metrics"].items()}, int(result["dp_steps"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run_torchrun(folder: Path, workers: int) -> int:
    """torchrun over :mod:`xr0_core.site.launch.rank`, the ranks' output in ``folder/ranks.log``."""
    from xr0_core.train.distributed import launch

    with (folder / RANKS_LOG).open("wb") as out:
        return launch("xr0_core.site.launch.rank", [str(folder)], workers, stdout=out)
