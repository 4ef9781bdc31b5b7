"""What a site keeps, and the trainer the federation (and ``xr0 pretrain``) drives (D4, D5; STYLE 3).

:class:`SiteTrainer` owns one site's SSL model, optimizer and decoded images. Its state is split by where
it lives:

- :meth:`SiteTrainer.shared_state_dict` -- student weights (float32 CPU): the only tensors that leave;
- :meth:`SiteTrainer.site_state_dict` -- teacher, centers, flattened optimizer state, next step: stays on
  the site's disk (:meth:`SiteTrainer.save_site_state`, safetensors with a small JSON header).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from xr0_core.config import XR0Config
from xr0_core.data.dataset import BatchMaker, ImageCache, StepDataset, ssl_records
from xr0_core.runtime import resolve_device
from xr0_core.ssl.factory import build_model
from xr0_core.ssl.schedules import Schedules
from xr0_core.train.loop import build_optimizer, host_metrics, step_seed, trainable_parameters
from xr0_core.train.loss_curve import loss_curve_metrics
from xr0_core.train.stepper import PlainStep, Stepper

log = logging.getLogger(__name__)

SITE_STATE_FORMAT = "xr0-site-state/1"
_OPTIM_PREFIX = "optim."


class SiteTrainer:
    """Local SSL training at one site.

    Parameters
    ----------
    cfg : XR0Config
    records : sequence of SiteRecord
        The site's usable records; those with ``split == "test"`` are not trained on.
    site : str
        Site name (part of every batch seed).
    device : torch.device, optional
        Default: ``cfg.train.device`` through :func:`xr0_core.runtime.resolve_device`.
    reader : callable, optional
        Image reader for the cache (default ``read_image``); tests pass in-memory readers.
    cache : ImageCache, optional
        A prepared cache (skips ``records`` decoding; benchmarks and tests).
    objective : XR0Config, optional
        The config the SSL model is built from, when it differs from ``cfg`` (default ``cfg``): a private round
        passes the DP-compatible objective (:func:`xr0_core.privacy.dp.dp_objective_config`; the site's round
        decides it). Its shared weights have the same keys; ``cfg`` stays what the config hash names.

    Attributes
    ----------
    stepper : Stepper
        How :meth:`train` steps (:mod:`xr0_core.train.stepper`): :class:`PlainStep` unless the caller sets
        another with :meth:`use_stepper` (a private round: a :class:`DPStep`).
    """

    def __init__(self, cfg: XR0Config, records: Sequence[Any], *, site: str, device: torch.device | None = None,
                 reader: Callable[[Any], Any] | None = None, cache: ImageCache | None = None,
                 objective: XR0Config | None = None) -> None:
        self.cfg = cfg
        self.objective = cfg if objective is None else objective
        self.site = str(site)
        self.device = device or resolve_device(cfg.train.device)
        self.records = ssl_records(records) if cache is None else list(cache.kept)
        self.cache = cache or ImageCache(self.records, cfg.train.load_size, reader=reader, progress=True)
        self.model = build_model(self.objective).to(self.device)
        self.stepper: Stepper = PlainStep()
        self.optimizer = build_optimizer(self.model)
        self.step = 0  # next global step to run
        self.teacher_ready = False  # False until the first shared weights are loaded or trained from
        self._maker: BatchMaker | None = None
        self._health = None  # xr0_core.train.health.HealthMonitor, built on first use
        self._compiled = False
        self.dist = None  # a xr0_core.train.distributed.DistContext: data-parallel over the site's GPUs

    @property
    def num_examples(self) -> int:
        """Number of SSL records (``split != "test"``): Flower's weighting key."""
        return len(self.records)

    # ------------------------------------------------------------------ shared weights
    def shared_state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.shared_state_dict()

    def load_shared_state_dict(self, sd: Mapping[str, torch.Tensor]) -> None:
        """Load global weights into the student; before any local history the teacher starts as a copy."""
        self.model.load_shared_state_dict(sd, strict=True)
        if not self.teacher_ready:
            self.model.reset_teacher_from_student()
            self.teacher_ready = True

    # ------------------------------------------------------------------ training
    def use_stepper(self, stepper: Stepper) -> Stepper:
        """Train with ``stepper`` from now on (:class:`~xr0_core.train.stepper.DPStep` for a private round)."""
        self.stepper = stepper
        return stepper

    def batch_maker(self) -> BatchMaker:
        """Views and masks of this site's images (with mXR-0 also the report tokens), keyed per image."""
        if self._maker is None:
            self._maker = BatchMaker(self.cache, self.cfg, site=self.site, patch_size=self.model.patch_size)
            if self.cfg.multimodal.enabled:  # mXR-0: each image's report tokens ride along (none: image-only)
                from xr0_core.data.reports import ReportBatches, ReportTokens

                tokens = ReportTokens(self.cache.kept, self.model.tokenizer, self.cfg.multimodal.max_tokens)
                self._maker = ReportBatches(self._maker, tokens)
        return self._maker

    def measure_health(self, step: int, total_steps: int) -> dict[str, float]:
        """``health/*`` scalars (:mod:`xr0_core.train.health`) on a fixed probe batch of this site's first
        cached images; empty under DP (the probe reads private images outside the accountant)."""
        if self.stepper.private or len(self.cache) < 2:
            return {}
        if self._health is None:
            from xr0_core.train.health import build_monitor

            # feature-change is measured from the round-0 weights: the same number after a resume
            reference = build_model(self.cfg).student["backbone"].to(self.device)
            self._health = build_monitor(self.cache, self.cfg.model.img_size, reference=reference)
        temp = Schedules.build(self.cfg, total_steps).at(min(step, total_steps - 1))["teacher_temp"]
        return self._health.measure(self.model, temp)

    def _batches(self, start: int, n: int):
        if self.stepper.draws_own_batches:  # DP-SGD draws its own Poisson batches of privacy units
            return (None for _ in range(n))
        maker = self.batch_maker()
        if self.dist is not None:  # data-parallel: this rank's block of each global batch, views for it only
            from xr0_core.train.distributed import RankBlocks

            maker = RankBlocks(maker, self.dist)
        workers = self.cfg.train.num_workers
        if workers <= 0:
            return (maker(start + i) for i in range(n))
        return iter(torch.utils.data.DataLoader(
            StepDataset(maker, start, n), batch_size=None, shuffle=False, num_workers=workers,
            pin_memory=self.device.type == "cuda", persistent_workers=False))

    def train(self, num_steps: int, *, start_step: int, total_steps: int, progress: bool = False,
              on_step: Callable[[int, dict], None] | None = None, commit_centers: bool = True) -> dict[str, float]:
        """Run global steps ``start_step .. start_step + num_steps - 1`` with schedules of ``total_steps``.

        Parameters
        ----------
        num_steps, start_step, total_steps : int
        progress : bool
            Progress bar on stderr.
        on_step : callable, optional
            ``on_step(step, metrics)`` after every step (metrics of that step).
        commit_centers : bool
            With ``ssl.centering = "frozen-per-round"``: at the end, set the centers from this call's
            teacher statistics. Pass False when the federation aggregates them instead.

        Returns
        -------
        dict
            ``loss`` (mean over the steps), ``loss-<part>`` (means), ``loss-first`` (first step's loss),
            ``num-examples``, ``train-seconds``, ``lr`` (last step), and the per-step curve in a few scalars
            ``loss-curve-00 ..`` (:func:`loss_curve_metrics`).
        """
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if start_step < 0 or total_steps < 1:
            raise ValueError(f"bad step range: start_step={start_step}, total_steps={total_steps}")
        len(self.cache)  # decode now (progress bar), before the clock and any DataLoader fork
        if len(self.cache) == 0:
            raise ValueError(f"site {self.site!r} has no decodable training images "
                             f"({len(self.cache.skipped)} failed to decode)")
        if not self.teacher_ready:
            self.model.reset_teacher_from_student()
            self.teacher_ready = True
        schedules = Schedules.build(self.cfg, total_steps)
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        metrics_health: dict[str, float] = {}
        step_losses: list[float] = []  # [num_steps], summarised into a few scalars below
        first_loss = float("nan")
        last: dict[str, float] = {}
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=num_steps, desc=f"{self.site} SSL", unit="step", file=sys.stderr, leave=False)
        self._maybe_compile()
        if self.stepper.private and self.stepper.dist is not self.dist:
            # A DP step built before ``dist`` was set would clip AND add noise on every rank (W noise draws).
            raise RuntimeError("the DP step was built before the trainer joined its data-parallel group: "
                               "set trainer.dist before building the DP step")
        if self.dist is not None:
            from xr0_core.train import distributed

        # Metrics reach the host every K steps (one device sync per K), never per step on a GPU.
        sync_every = self.cfg.train.log_every or (25 if self.device.type == "cuda" else 1)
        pending: list[tuple[int, dict, dict | None]] = []  # (step, raw metrics, health measured after it)
        for i, batch in enumerate(self._batches(start_step, num_steps)):
            step = start_step + i
            raw = self.stepper(self, batch, schedules, step, rng_seed=step_seed(self.cfg.seed, self.site, step),
                               sync=sync_every == 1)
            self.step = step + 1
            every = self.cfg.train.health_every
            health_now = None
            if every > 0 and (self.step % every == 0 or i == num_steps - 1):
                # Measured on the model as it is after this step (not when its metrics reach the host).
                health_now = self.measure_health(step, total_steps)
                metrics_health = health_now
            pending.append((step, raw, health_now))
            if len(pending) < sync_every and i < num_steps - 1:
                continue
            for done, raw, health in pending:
                last = host_metrics(raw, done)
                if self.dist is not None:
                    last = distributed.mean_metrics(last, self.dist)
                if health is not None:
                    last = {**last, **health}
                if done == start_step:
                    first_loss = last["loss"]
                step_losses.append(float(last["loss"]))
                for k, v in last.items():
                    if k.startswith("loss"):
                        sums[k] = sums.get(k, 0.0) + v
                if on_step is not None:
                    on_step(done, last)
            if bar is not None:
                bar.update(len(pending))
                bar.set_postfix(loss=f"{last['loss']:.3f}")
            pending.clear()
        if bar is not None:
            bar.close()
        if commit_centers and self.cfg.ssl.centering == "frozen-per-round":
            if self.dist is not None:
                distributed.sum_center_stats(self.model, self.dist)
            self.model.commit_centers()
        metrics = {k: v / num_steps for k, v in sums.items()}
        metrics.update({"loss-first": first_loss, "num-examples": float(self.num_examples),
                        "train-seconds": time.perf_counter() - t0, "lr": last.get("lr", 0.0)})
        metrics.update(metrics_health)  # the last health measurement of this call (health/*)
        metrics.update(loss_curve_metrics(step_losses))
        return metrics

    def _maybe_compile(self) -> None:
        """``train.compile``: compile the transformer blocks of the student and teacher backbones in place
        (``nn.Module.compile`` keeps the state-dict keys, so shared weights and site state are unchanged). The
        blocks, not the backbone: the SSL forward (:func:`~xr0_core.models.backbone.forward_tokens`) calls the
        backbone's parts, never its own ``forward``. Not with DP: per-unit gradients use ``torch.func.vmap``
        over the eager modules."""
        if not self.cfg.train.compile or self._compiled or self.stepper.private:
            return
        for part in (self.model.student, self.model.teacher):
            part["backbone"].blocks.compile()
        self._compiled = True

    # ------------------------------------------------------------------ site state
    def site_state_dict(self) -> dict[str, torch.Tensor]:
        """Teacher + centers (``teacher.*``, ``*_loss.*``), optimizer moments (``optim.<param>.<slot>``),
        ``step`` and ``teacher_ready`` (int64 scalars). All CPU tensors."""
        sd = self.model.site_state_dict()
        names = {id(p): n for n, p in trainable_parameters(self.model).items()}
        for p, slots in self.optimizer.state.items():
            for slot, value in slots.items():
                if torch.is_tensor(value):
                    sd[f"{_OPTIM_PREFIX}{names[id(p)]}.{slot}"] = value.detach().cpu().clone()
        sd["step"] = torch.tensor(self.step, dtype=torch.int64)
        sd["teacher_ready"] = torch.tensor(int(self.teacher_ready), dtype=torch.int64)
        return sd

    def load_site_state_dict(self, sd: Mapping[str, torch.Tensor]) -> None:
        model_sd = {k: v for k, v in sd.items() if not k.startswith(_OPTIM_PREFIX) and k not in ("step", "teacher_ready")}
        self.model.load_site_state_dict(model_sd)
        params = trainable_parameters(self.model)
        self.optimizer.state.clear()
        for key, value in sd.items():
            if not key.startswith(_OPTIM_PREFIX):
                continue
            name, _, slot = key[len(_OPTIM_PREFIX):].rpartition(".")
            if name not in params:
                raise ValueError(f"site state has optimizer state for unknown parameter {name!r}")
            p = params[name]
            # AdamW keeps ``step`` on CPU (non-capturable); moments live with the parameter.
            # Fused AdamW (CUDA) keeps ``step`` on the parameter's device too.
            fused = any(g.get("fused") for g in self.optimizer.param_groups)
            target = value.to(p.device).clone() if slot == "step" and fused else \
                value.clone() if slot == "step" else value.to(p.device, p.dtype).clone()
            self.optimizer.state[p][slot] = target
        self.step = int(sd["step"])
        self.teacher_ready = bool(int(sd["teacher_ready"]))

    def save_site_state(self, path: str | Path) -> Path:
        """Write the site state atomically as safetensors; non-tensor facts go in its JSON metadata
        (:func:`xr0_core.checkpoint.save_tensors`)."""
        from xr0_core.checkpoint import save_tensors

        meta = {"format": SITE_STATE_FORMAT, "site": self.site, "config_hash": self.cfg.hash(), "step": self.step}
        return save_tensors(path, self.site_state_dict(), meta)

    def load_site_state(self, path: str | Path) -> None:
        """Load a file written by :meth:`save_site_state`; refuses another format or a different config."""
        from xr0_core.checkpoint import load_tensors, read_meta

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no site state at {path}")
        meta = read_meta(path)
        if meta.get("format") != SITE_STATE_FORMAT:
            raise ValueError(f"{path} is not an XR-0 site state ({meta.get('format')!r})")
        if meta.get("config_hash") != self.cfg.hash():
            raise ValueError(f"{path} was written with another config (hash {meta.get('config_hash')}, now "
                             f"{self.cfg.hash()}); use the same preset and overrides, or start fresh")
        self.load_site_state_dict(load_tensors(path))
