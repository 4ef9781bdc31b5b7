"""``xr0 evaluate``: evaluate one backbone (and the random-init baseline) on one labelled dataset, locally.

    xr0 evaluate --checkpoint FILE|random --data DIR [--manifest FILE] [--tasks fam,...] [--preset P]
                 [--set key=value ...] [--out DIR] [--examples N] [--json]

``--checkpoint`` accepts:

- an exported backbone (``backbone.safetensors`` with its ``backbone.json`` sidecar, from ``xr0 pretrain`` or
  the coordinator's export): the architecture and view size come from the sidecar;
- a server round checkpoint (``round-NNNN/weights.safetensors`` next to ``state.json``, or the checkpoint
  folder itself: its latest round): the configuration comes from ``state.json``;
- shared student weights (``xr0 pretrain``'s ``checkpoint.safetensors``): give the ``--preset`` / ``--set``
  it was trained with;
- ``random``: the random-init backbone of ``--preset``.

The baseline is always the random-init backbone of the same architecture and seed (the round-0 weights of a
federated run), measured in the same call. ``--json`` prints ``{"tasks", "baseline_random", "skipped",
"counts", "images"}``; ``--out`` writes ``evaluation.json`` and ``report.html`` with qualitative examples
(this is local data: the images never leave this machine).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from xr0_core.cli import CLIError, parse_sets, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate a backbone on labelled data (classification, retrieval, segmentation, landmarks, ...)",
        description="Frozen-backbone evaluation of one checkpoint and the random-init baseline on one dataset.",
    )
    p.add_argument("--checkpoint", required=True,
                   help="backbone.safetensors (export), weights.safetensors / checkpoint folder (server), "
                        "checkpoint.safetensors (xr0 pretrain), or 'random'")
    p.add_argument("--data", required=True, type=Path, help="the dataset folder")
    p.add_argument("--manifest", type=Path, default=None, help="manifest CSV (default DATA/manifest.csv)")
    p.add_argument("--tasks", default=None,
                   help="comma-separated families or task keys (default: eval.tasks, i.e. all that apply)")
    p.add_argument("--preset", default=None, help="config preset for 'random' and pretrain checkpoints")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override in flat form, e.g. --set eval.head-steps=50 (repeatable)")
    p.add_argument("--out", type=Path, default=None, help="write evaluation.json and report.html here")
    p.add_argument("--examples", type=int, default=4, help="qualitative examples per task in the report")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=_run)


def _config(base: dict[str, Any], args: argparse.Namespace):
    from xr0_core.config import ConfigError, from_flat

    flat = dict(base)
    if args.preset is not None:
        flat["preset"] = args.preset
    flat.update(parse_sets(args.overrides))
    try:
        return from_flat(flat)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None


def load_backbone_source(args: argparse.Namespace) -> tuple[Any, Callable[[], Any] | None, str]:
    """(config, factory of the evaluated backbone or None for 'random', description)."""
    import torch

    from xr0_core.eval.baseline import backbone_from_shared

    ckpt = args.checkpoint
    if ckpt == "random":
        return _config({}, args), None, "random init"
    path = Path(ckpt).expanduser()
    if path.is_dir():
        latest = path / "latest.json"
        if not latest.is_file():
            raise CLIError(f"--checkpoint {path} is a folder without latest.json; give a .safetensors file")
        path = path / json.loads(latest.read_text())["path"] / "weights.safetensors"
    if not path.is_file():
        raise CLIError(f"--checkpoint {path}: file not found (or pass 'random')")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CLIError(f"--checkpoint {path}: not a readable safetensors file ({exc})") from None

    sidecar = path.with_suffix(".json")
    state = path.parent / "state.json"
    if sidecar.is_file() and json.loads(sidecar.read_text()).get("format", "").startswith("xr0-backbone"):
        spec = json.loads(sidecar.read_text())
        cfg = _config({"model.backbone": spec["backbone"], "model.img_size": spec["input"]["img_size"],
                       "train.load_size": max(spec["input"]["img_size"], 1)}, args)

        def exported() -> Any:
            vit = backbone_from_shared(cfg, None)
            try:
                vit.load_state_dict(weights, strict=True)
            except RuntimeError as exc:
                raise CLIError(f"--checkpoint {path} does not match {spec['backbone']}: {exc}") from None
            return vit

        return cfg, exported, f"exported backbone {path}"
    base: dict[str, Any] = {}
    if state.is_file():
        base = {k: v for k, v in json.loads(state.read_text()).get("config_flat", {}).items()
                if not k.startswith(("simulation.", "federation."))}
    cfg = _config(base, args)

    def shared() -> Any:
        try:
            return backbone_from_shared(cfg, {k: torch.as_tensor(v) for k, v in weights.items()})
        except ValueError as exc:
            raise CLIError(f"--checkpoint {path} does not fit preset {cfg.preset!r} ({cfg.model.backbone}); "
                           f"pass the --preset / --set it was trained with: {str(exc)[:300]}") from None

    shared().eval()  # fail now, before decoding any image, when the weights do not fit
    shared.weights = weights  # type: ignore[attr-defined]  # mXR-0: the text side for zero-shot evaluation
    return cfg, shared, f"shared weights {path}"


def _run(args: argparse.Namespace) -> int:
    from xr0_core.data.index import SiteDataError, index_site
    from xr0_core.data.manifest import ManifestError
    from xr0_core.eval.suite import evaluate_models
    from xr0_core.eval.tasks.base import EvalDataError

    if args.examples < 0:
        raise CLIError("--examples must be >= 0")
    cfg, model, what = load_backbone_source(args)
    try:
        index = index_site(args.data, args.manifest, verify_pixels=False)
    except (SiteDataError, ManifestError) as exc:
        raise CLIError(str(exc)) from None
    print(f"xr0 evaluate: {what} on {len(index.records)} images of {index.root} "
          f"({len(index.skipped)} skipped)", file=sys.stderr)
    from xr0_core.eval.baseline import backbone_from_shared

    try:
        result = evaluate_models(cfg, index.records, model, lambda: backbone_from_shared(cfg, None),
                                 tasks=args.tasks, strict=True, examples=args.examples if args.out else 0)
        if cfg.multimodal.enabled and getattr(model, "weights", None) is not None:
            from xr0_core.eval.zeroshot import add_zeroshot  # the checkpoint carries a text tower + projections

            add_zeroshot(result, cfg, index.records, model.weights)
    except (EvalDataError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    body = result.to_json()
    body["checkpoint"] = str(args.checkpoint)
    if args.out is not None:
        from xr0_core.eval.evaluation_report import write_local_report

        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "evaluation.json").write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
        page = write_local_report(args.out, body, result.examples)
        print(f"xr0 evaluate: wrote {page}", file=sys.stderr)
    if args.json:
        print_json(body)
    else:
        for task in sorted(set(result.tasks) | set(result.baseline_random)):
            for metric, value in sorted(result.tasks.get(task, {}).items()):
                base = result.baseline_random.get(task, {}).get(metric, float("nan"))
                print(f"{task:45s} {metric:18s} {value:8.4f}   random {base:8.4f}", file=sys.stderr)
        for reason in result.skipped:
            print(f"skipped: {reason}", file=sys.stderr)
    return 0
