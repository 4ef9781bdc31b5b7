"""``xr0 pretrain``: XR-0 self-supervised pretraining on local data (one site, or several folders pooled).

    xr0 pretrain --data DIR [--data DIR2 ...] [--manifest FILE] --preset cpu-tiny --steps N --out OUT
                 [--resume] [--multimodal] [--json] [--set key=value ...]

Writes to OUT:

- ``metrics.jsonl`` -- one JSON object per step (loss and parts, lr, wd, momentum, teacher temperature);
- ``checkpoint.safetensors`` (shared student weights) and ``site_state.safetensors`` (teacher, centers,
  optimizer) every ``--checkpoint-every`` steps and at the end; ``--resume`` continues from them with the
  same schedules (bitwise the same run on CPU);
- ``backbone.safetensors`` + ``backbone.json`` -- the timm-compatible export (D11);
- ``curve.png`` -- the loss curve;
- ``summary.json`` -- what ``--json`` prints;
- ``model_card.md`` / ``model_card.json`` -- the Hugging Face model card (:mod:`xr0_core.model_card`);
- ``logs/pretrain.log`` -- library output and warnings (``--verbose`` shows them on the terminal instead).

At the end it runs the evaluation suite's anatomy probe (``eval.tasks = probe``: weighted k-NN and a linear
probe of anatomy on frozen CLS features) on held-out images (``split == test``; without splits a seeded 20 % of
patients) for the pretrained backbone, the random-init backbone it started from and the raw pixels, so
"pretraining helped" is a measured number (D8). Held-out sets of one hospital are small, so the summary
also gives ``knn_gain`` (pretrained minus random) with a paired, patient-level bootstrap 95 % interval
``knn_gain_ci95``: an interval that straddles 0 says the run is too short or the set too small to tell.

``--gpus W`` re-runs the command under ``torchrun`` on W data-parallel processes
(:mod:`xr0_core.train.distributed`): the same weights as one process on the same global batches (per-sample
objective; batch-coupled terms see each rank's block). Rank 0 writes every output and runs the evaluation;
rank ``r`` logs to ``logs/pretrain-rank<r>.log``.

``--multimodal`` (mXR-0, docs/multimodal.md) also trains on the reports, prints the upload bytes per
text-sharing mode, adds ``retrieval_r5`` / ``retrieval_r5_random`` (zero-shot image-to-report Recall@5 on the
held-out pairs with the model's own projections, trained vs random image weights with the same text tower),
``report_bleu4`` / ``report_rouge_l`` (+ ``_random``) and writes ``text_tower/``,
``multimodal_heads.safetensors`` and ``multimodal.json`` next to the backbone.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from xr0_core.cli import CLIError, parse_sets, print_json

SITE = "pretrain"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="self-supervised pretraining (DINO + iBOT) on local data, with k-NN evaluation",
        description="XR-0 self-supervised pretraining on one site's data (or several folders pooled).",
    )
    p.add_argument("--data", required=True, type=Path, action="append",
                   help="a site's data folder (repeat to pool several folders)")
    p.add_argument("--manifest", type=Path, default=None,
                   help="manifest CSV (only with a single --data; default DATA/manifest.csv or a folder walk)")
    p.add_argument("--preset", default="cpu-tiny", help="config preset: cpu-tiny, vit-s, vit-b")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: train.steps of the preset)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    p.add_argument("--checkpoint-every", type=int, default=50, metavar="K", help="checkpoint every K steps")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override in flat form, e.g. --set train.batch-size=32 (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    p.add_argument("--verbose", action="store_true",
                   help="show library output and warnings on the terminal (default: OUT/logs/pretrain.log)")
    p.add_argument("--multimodal", action="store_true",
                   help="mXR-0: also learn from reports (text tower, contrastive + captioning; sets multimodal.enabled)")
    p.add_argument("--gpus", type=int, default=1, metavar="W",
                   help="train data-parallel on W processes (one per GPU; gloo processes on CPU), launched with "
                        "torchrun; rank 0 writes every output (default 1)")
    p.set_defaults(func=_run)


def _build_config(args: argparse.Namespace):
    from xr0_core.config import ConfigError, from_flat

    flat: dict[str, Any] = {"preset": args.preset, **parse_sets(args.overrides)}
    if args.steps is not None:
        flat["train.steps"] = args.steps
    if getattr(args, "multimodal", False):
        flat["multimodal.enabled"] = True
    try:
        cfg = from_flat(flat)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    if cfg.privacy.enabled or cfg.privacy.client_level:
        # No DP-SGD step, ledger or accountant runs here: a card saying "differential privacy" would be false.
        raise CLIError("xr0 pretrain trains without differential privacy (no per-patient clipping, noise or "
                       "ledger); privacy.enabled / privacy.client-level apply to federated rounds: use "
                       "`xr0 simulate --dp`, or drop the --set")
    return cfg


def _index(args: argparse.Namespace) -> list[Any]:
    from xr0_core.data.index import SiteDataError, index_site
    from xr0_core.data.manifest import ManifestError

    if args.manifest is not None and len(args.data) > 1:
        raise CLIError("--manifest works with a single --data folder")
    records: list[Any] = []
    for folder in args.data:
        try:
            # Headers only: the image cache decodes every pixel once anyway and skips what fails.
            index = index_site(folder, args.manifest, verify_pixels=False, progress=False)
        except (SiteDataError, ManifestError) as exc:
            raise CLIError(str(exc)) from None
        for s in index.skipped[:5]:
            _say(f"xr0 pretrain: skipped {s.path}: {s.reason}")
        if len(index.skipped) > 5:
            _say(f"xr0 pretrain: ... {len(index.skipped) - 5} more skipped (see `xr0 site check`)")
        records.extend(index.records)
    return records


def _say(text: str) -> None:
    """A project line on the terminal (stderr is the log while :func:`quiet_console` is open)."""
    from xr0_core.console import console

    con = console()
    con.stream.write(text + "\n")
    con.stream.flush()


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _window_mean(values: list[float], first: bool) -> float:
    w = max(1, min(10, len(values) // 10))
    part = values[:w] if first else values[-w:]
    return float(sum(part) / len(part)) if part else float("nan")


def _fmt(value: Any) -> str:
    """Three decimals for a float or a list of floats; anything else as is (None: not measured)."""
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _plot_curve(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [r["step"] for r in rows]
    for key in sorted({k for r in rows for k in r if k.startswith("loss")}):
        ax.plot(steps, [r.get(key, float("nan")) for r in rows], label=key, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _save_checkpoint(trainer, out: Path, total_steps: int) -> None:
    from xr0_core.checkpoint import save_tensors

    meta = {"step": trainer.step, "total_steps": total_steps, "config_hash": trainer.cfg.hash()}
    save_tensors(out / "checkpoint.safetensors", trainer.shared_state_dict(), meta)
    trainer.save_site_state(out / "site_state.safetensors")


def _resume(trainer, out: Path, total_steps: int) -> None:
    from xr0_core.checkpoint import load_tensors, read_meta

    ckpt, state = out / "checkpoint.safetensors", out / "site_state.safetensors"
    if not ckpt.is_file() or not state.is_file():
        raise CLIError(f"--resume: no checkpoint in {out} (need checkpoint.safetensors and site_state.safetensors)")
    meta = read_meta(ckpt)
    if meta.get("total_steps") != total_steps:
        raise CLIError(f"--resume: the checkpoint's run has {meta.get('total_steps')} steps, not {total_steps}; "
                       "pass the same --steps (schedules depend on it)")
    if meta.get("config_hash") != trainer.cfg.hash():
        raise CLIError(f"--resume: {ckpt} was written with another config; use the same --preset and --set")
    try:
        trainer.load_shared_state_dict(load_tensors(ckpt))
        trainer.load_site_state(state)
    except ValueError as exc:
        raise CLIError(f"--resume: {exc}") from None


def _images(cfg, serve: list[Any], every: list[Any], args: argparse.Namespace, out: Path):
    """The image source of ``serve`` (prepared shards under ``out`` cover ``every`` record, held-out ones too)."""
    import os

    from xr0_core.data.source import open_site_images

    root = os.path.commonpath([str(Path(d).expanduser().resolve()) for d in args.data])
    return open_site_images(cfg, serve, out, data_dir=root, prepare_records=every, workers=os.cpu_count() or 1,
                            progress=False)  # the quiet console owns the terminal


PROBE_TASK = "classification/anatomy"  # the suite's anatomy probe (eval.tasks = probe)


def _knn(trainer, test_records: list[Any], cfg) -> dict[str, Any]:
    """The evaluation suite's anatomy probe (:data:`xr0_core.eval.suite.PROBE`: weighted k-NN and linear probe on
    frozen CLS features) of the trained student backbone, the random-init backbone it started from and the raw
    pixels, fitted on the training images and scored on the same held-out images; paired patient-level intervals
    of the k-NN gains."""
    from xr0_core.eval.baseline import PIXELS, random_init_backbone
    from xr0_core.eval.metrics import paired_bootstrap_ci
    from xr0_core.eval.suite import PRETRAINED, PROBE, RANDOM, run_suite, with_split

    train = [r for r in trainer.cache.kept if getattr(r, "anatomy", None)]
    names = sorted({r.anatomy for r in train})
    # A held-out anatomy never seen in training has no neighbours to vote for it: not scorable.
    test = [r for r in test_records if getattr(r, "anatomy", None) in names]
    result: dict[str, Any] = {"knn_accuracy": None, "knn_accuracy_random": None, "knn_train": len(train),
                              "knn_test": len(test), "anatomies": names}
    if len(names) < 2 or not test:
        result["knn_note"] = ("k-NN skipped: need at least two anatomies in the training images and held-out "
                              "images of those anatomies")
        return result
    student = trainer.model.student["backbone"]
    outputs, run = run_suite(cfg, with_split(train, test), {PRETRAINED: lambda: student,
                                                            RANDOM: lambda: random_init_backbone(cfg)},
                             tasks=PROBE, device=trainer.device, strict=False, pixels=True)
    if any(PROBE_TASK not in outputs.get(name, {}).get("metrics", {}) for name in (PRETRAINED, RANDOM, PIXELS)):
        result["knn_note"] = "k-NN skipped: " + ("; ".join(r for r in run.skipped if PROBE_TASK in r)
                                                 or "the anatomy probe did not run on these images")
        return result
    scores = {name: outputs[name]["metrics"][PROBE_TASK] for name in (PRETRAINED, RANDOM, PIXELS)}
    per_row = {name: outputs[name]["per_row"][PROBE_TASK][0] for name in scores}
    rows = outputs[PRETRAINED]["per_row"][PROBE_TASK][1]
    # A held-out set of a few dozen images moves in steps of several points: say how sure the gain is.
    # Patients are the resampling unit (their images are not independent draws).
    patients = [run.data.records[i].patient_id or str(run.data.records[i].path) for i in rows]
    result.update({"knn_test": run.counts[PROBE_TASK], "knn_train": len(run.data.rows("train")),
                   "knn_accuracy": scores[PRETRAINED]["knn-accuracy"],
                   "knn_accuracy_random": scores[RANDOM]["knn-accuracy"],
                   "linear_accuracy": scores[PRETRAINED]["linear-accuracy"],
                   "linear_accuracy_random": scores[RANDOM]["linear-accuracy"]})
    knn = {name: per_row[name]["knn-accuracy"] for name in per_row}
    result["knn_gain"] = result["knn_accuracy"] - result["knn_accuracy_random"]
    result["knn_gain_ci95"] = list(paired_bootstrap_ci(knn[PRETRAINED], knn[RANDOM], groups=patients, seed=cfg.seed))
    result["knn_gain_vs_pixels"] = result["knn_accuracy"] - scores[PIXELS]["knn-accuracy"]
    result["knn_gain_vs_pixels_ci95"] = list(paired_bootstrap_ci(knn[PRETRAINED], knn[PIXELS], groups=patients,
                                                                 seed=cfg.seed))
    result["baseline_pixels"] = {"knn_accuracy": scores[PIXELS]["knn-accuracy"],
                                 "linear_accuracy": scores[PIXELS]["linear-accuracy"]}
    return result


def _multimodal(trainer, test_records: list[Any], cfg, out: Path) -> dict[str, Any]:
    """mXR-0 outputs: upload bytes per text-sharing mode, zero-shot numbers on the held-out pairs (trained and
    round-0 model, same text tower), and the text-side export next to the backbone."""
    from xr0_core.eval.zeroshot import GEN, I2R, R2I, evaluate_zeroshot
    from xr0_core.export_text import export_text_side

    sharing = trainer.model.sharing_report()
    for line in sharing.lines():
        _say(f"xr0 pretrain: {line}")
    zs = evaluate_zeroshot(cfg, test_records, trainer.shared_state_dict(), rows="all", device=trainer.device)
    res: dict[str, Any] = {"multimodal": {**sharing.to_json(), "zeroshot": zs,
                                          "reports_train": int(sum(1 for r in trainer.records
                                                                   if getattr(r, "report", None)))}}
    for key, (task, metric) in {"retrieval_r5": (I2R, "recall@5"), "retrieval_r5_report_to_image": (R2I, "recall@5"),
                                "report_bleu4": (GEN, "bleu4"), "report_rouge_l": (GEN, "rouge-l")}.items():
        res[key] = zs["tasks"].get(task, {}).get(metric)
        res[f"{key}_random"] = zs["baseline_random"].get(task, {}).get(metric)
    res["retrieval_pairs"] = zs["counts"].get(I2R, zs["counts"].get(GEN, 0))
    if zs["skipped"]:
        res["multimodal_note"] = "; ".join(zs["skipped"])
    export_text_side(trainer.model, out)
    return res


def _run(args: argparse.Namespace) -> int:
    import os

    from xr0_core.console import quiet_console

    if args.gpus < 1:
        raise CLIError(f"--gpus {args.gpus}: give the number of data-parallel processes (>= 1)")
    if args.gpus > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return _launch_ranks(args)
    from xr0_core.train.distributed import init_from_env

    from xr0_core.site.launch.rank import rank_device

    ctx = None
    if args.gpus > 1:  # a rank under torchrun (launched by _launch_ranks)
        device = rank_device(_build_config(args))
        ctx = init_from_env("nccl" if device.type == "cuda" else "gloo")
    main = ctx is None or ctx.is_main
    args.out.mkdir(parents=True, exist_ok=True)
    # The project's lines and the step bar on the terminal; library output and warnings in OUT/logs/.
    try:
        with quiet_console(args.out / "logs", "pretrain" if main else f"pretrain-rank{ctx.rank}",
                           verbose=args.verbose and main) as con:
            summary = _pretrain(args, con, ctx)
    finally:
        if ctx is not None:
            import torch.distributed as dist

            dist.destroy_process_group()
    if args.json and main:  # after the block: stdout is the log inside it
        print_json(summary)
    return 0


def _launch_ranks(args: argparse.Namespace) -> int:
    """Re-run this very command under torchrun on ``args.gpus`` processes (refused first if they cannot run)."""
    from xr0_core.site.launch.parallel import ParallelRoundError, check_workers
    from xr0_core.train.distributed import launch

    cfg = _build_config(args)
    try:
        check_workers(cfg, args.gpus, private=False)
    except ParallelRoundError as exc:
        raise CLIError(str(exc).replace("node config gpus", "--gpus")) from None
    argv = [str(a) for d in args.data for a in ("--data", d)] + ["--preset", args.preset, "--out", str(args.out),
                                                                  "--checkpoint-every", str(args.checkpoint_every),
                                                                  "--gpus", str(args.gpus)]
    argv += ["--manifest", str(args.manifest)] if args.manifest is not None else []
    argv += ["--steps", str(args.steps)] if args.steps is not None else []
    argv += [a for o in args.overrides for a in ("--set", o)]
    argv += [flag for flag, on in (("--resume", args.resume), ("--json", args.json), ("--verbose", args.verbose),
                                   ("--multimodal", args.multimodal)) if on]
    rc = launch("xr0_core.cli.pretrain", argv, args.gpus)
    if rc != 0:
        raise CLIError(f"data-parallel pretraining on {args.gpus} processes failed (torchrun exit code {rc}); see "
                       f"{args.out / 'logs'}")
    return 0


def _pretrain(args: argparse.Namespace, con, ctx=None) -> dict[str, Any]:
    """The run; with ``ctx`` (a rank of ``--gpus W``) every rank trains and only rank 0 writes and evaluates."""
    from tqdm import tqdm

    from xr0_core.data.dataset import ssl_records
    from xr0_core.export import export_backbone
    from xr0_core.train.trainer import SiteTrainer

    cfg = _build_config(args)
    total = cfg.train.steps
    if args.checkpoint_every < 1:
        raise CLIError("--checkpoint-every must be >= 1")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    records = _index(args)
    from xr0_core.data.splits import holdout_split

    train_records, test_records = holdout_split(records, cfg.seed)
    main = ctx is None or ctx.is_main
    # Large sites read prepared shards from OUT/prepared (train.image-cache; D16), small ones decode into RAM.
    if not main:  # rank 0 brings the prepared folder up to date first; the others then only read it
        import torch.distributed as dist

        dist.barrier()
    images = _images(cfg, ssl_records(train_records), records, args, out)
    if main and ctx is not None:
        import torch.distributed as dist

        dist.barrier()
    device = None
    if ctx is not None:
        from xr0_core.site.launch.rank import rank_device

        device = rank_device(cfg)
    trainer = SiteTrainer(cfg, train_records, site=SITE, cache=images, device=device)
    trainer.dist = ctx
    if trainer.num_examples == 0:
        raise CLIError("no training images left after holding out the test split")
    metrics_path = out / "metrics.jsonl"
    if args.resume:
        _resume(trainer, out, total)
        rows = [r for r in _read_metrics(metrics_path) if r["step"] < trainer.step]
    else:
        rows = []
    if main:
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        _say(f"xr0 pretrain: {trainer.num_examples} training images, {len(test_records)} held out; "
             f"steps {trainer.step}..{total - 1} on {trainer.device}"
             + (f" x {ctx.world_size} processes" if ctx is not None else "")
             + ("" if args.verbose else f"; logs in {out / 'logs'}"))

    # One bar on the terminal; off the terminal (CI, pipes) a handful of lines, not one per refresh.
    bar = tqdm(total=total, initial=trainer.step, desc="pretrain", unit="step", file=con.stream,
               disable=(args.json and not con.tty) or not main, mininterval=0.5 if con.tty else 30.0)
    import contextlib

    with (metrics_path.open("a") if main else contextlib.nullcontext()) as fh:
        def on_step(step: int, m: dict[str, float]) -> None:
            row = {"step": step, **{k: m[k] for k in sorted(m)}}
            rows.append(row)
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{m['loss']:.3f}")

        while trainer.step < total:
            n = min(args.checkpoint_every - trainer.step % args.checkpoint_every, total - trainer.step)
            trainer.train(n, start_step=trainer.step, total_steps=total, on_step=on_step if main else None)
            if main:
                _save_checkpoint(trainer, out, total)
    bar.close()
    if not main:  # rank 0 exports and evaluates the (identical) trained model
        return {}

    export_backbone(trainer.model.student["backbone"], cfg.model, out / "backbone.safetensors",
                    extra={"steps": total, "config_hash": cfg.hash(), "preset": cfg.preset})
    multimodal = _multimodal(trainer, test_records, cfg, out) if cfg.multimodal.enabled else {}
    losses = [r["loss"] for r in rows]
    if rows:
        _plot_curve(rows, out / "curve.png")
    from xr0_core.train.health_verdict import assess

    health = assess([r for r in rows if any(k.startswith("health/") for k in r)], losses)
    summary: dict[str, Any] = {
        "steps": total,
        "initial_loss": _window_mean(losses, first=True),
        "final_loss": _window_mean(losses, first=False),
        "num_train_images": trainer.num_examples,
        "num_heldout_images": len(test_records),
        "skipped_images": len(trainer.cache.skipped),
        **_knn(trainer, test_records, cfg),
        **multimodal,
        "health": health,
        "seconds": round(time.perf_counter() - t0, 1),
        "device": str(trainer.device),
        "config_hash": cfg.hash(),
        "paths": {name: str(out / name) for name in ("metrics.jsonl", "checkpoint.safetensors",
                                                       "site_state.safetensors", "backbone.safetensors",
                                                       "backbone.json", "curve.png")},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    from xr0_core.model_card import pretrain_card, write_card

    by_anatomy: dict[str, int] = {}
    for r in trainer.cache.kept:
        a = getattr(r, "anatomy", None) or "unknown"
        by_anatomy[a] = by_anatomy.get(a, 0) + 1
    export = json.loads((out / "backbone.json").read_text())
    write_card(out, pretrain_card(summary, cfg.to_flat(), export, by_anatomy))
    if not args.json:
        print(f"xr0 pretrain: loss {summary['initial_loss']:.3f} -> {summary['final_loss']:.3f}; "
              f"k-NN anatomy accuracy {_fmt(summary['knn_accuracy'])} (random init "
              f"{_fmt(summary['knn_accuracy_random'])}; gain 95% CI {_fmt(summary.get('knn_gain_ci95'))}), "
              f"linear probe {_fmt(summary.get('linear_accuracy'))} (random init {_fmt(summary.get('linear_accuracy_random'))}); "
              f"outputs in {out}", file=con.stream)
        if cfg.multimodal.enabled:
            print(f"xr0 pretrain: zero-shot image-to-report Recall@5 {_fmt(summary.get('retrieval_r5'))} (random "
                  f"image weights {_fmt(summary.get('retrieval_r5_random'))}); report generation BLEU-4 "
                  f"{_fmt(summary.get('report_bleu4'))} (random {_fmt(summary.get('report_bleu4_random'))})",
                  file=con.stream)
        pix = summary.get("baseline_pixels") or {}
        if pix:
            print(f"xr0 pretrain: raw-pixel baseline: k-NN {_fmt(pix.get('knn_accuracy'))}, linear probe "
                  f"{_fmt(pix.get('linear_accuracy'))} (pretrained k-NN minus pixels 95% CI "
                  f"{_fmt(summary.get('knn_gain_vs_pixels_ci95'))})", file=con.stream)
    last = health.get("last", {})
    print(f"xr0 pretrain: SSL health {health['status'].upper()}"
          + (f" (RankMe CLS {last['rankme-cls']:.1f}, patch {last.get('rankme-patch', float('nan')):.1f}, "
             f"prototypes used {last.get('prototype-usage', float('nan')):.0f}/{last.get('prototypes', float('nan')):.0f})"
             if "rankme-cls" in last else "")
          + "".join(f"; {r}" for r in health["reasons"]), file=con.stream)
    return summary


def main(argv: list[str] | None = None) -> int:
    """``python -m xr0_core.cli.pretrain ARGS`` (what ``--gpus W`` runs on every rank)."""
    import sys

    from xr0_core.cli import pretrain, run

    return run(["pretrain", *(sys.argv[1:] if argv is None else argv)], [pretrain])


if __name__ == "__main__":
    raise SystemExit(main())
