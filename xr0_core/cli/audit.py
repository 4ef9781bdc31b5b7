"""``xr0 audit``: measure what a released model tells an attacker about who was in this hospital's training data.

    xr0 audit --state-dir S --data DIR --model FILE [--manifest FILE] [--references R --reference-steps K]
              [--canaries [--canary-guess-fraction F]] [--out DIR] [--views V] [--preset P]
              [--set key=value ...] [--json]

``--model`` takes what ``xr0 evaluate --checkpoint`` takes: an exported ``backbone.safetensors`` (black box:
feature scores only), a round checkpoint or shared weights (the SSL-loss score too, from the heads). Members
are the site's training patients, non-members its held-out patients and left-out canaries
(:mod:`xr0_core.audit.run`). Writes ``audit.json`` and ``roc.png`` to ``--out`` (default
``<state-dir>/audit/report``); nothing leaves the machine. ``--canaries`` also runs the one-run epsilon audit on
the canaries drawn under ``privacy.audit-canaries`` (and fails when the site has none).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xr0_core.cli import CLIError, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="membership-inference and one-run epsilon audit of a released model at this site",
                       description="Empirical privacy audit of a released model on this hospital's own patients: "
                                   "membership-inference AUROC and TPR at low FPR per patient, the epsilon lower "
                                   "bound they imply at the site's delta, and with --canaries the one-run audit.")
    p.add_argument("--state-dir", type=Path, required=True, help="the hospital's state folder (policy, ledger, canaries)")
    p.add_argument("--data", type=Path, required=True, help="the hospital's data folder (as trained on)")
    p.add_argument("--manifest", type=Path, default=None)
    p.add_argument("--model", required=True,
                   help="backbone.safetensors (export), a round checkpoint (weights.safetensors or its folder), or "
                        "shared weights (xr0 pretrain checkpoint.safetensors, with --preset / --set)")
    p.add_argument("--preset", default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--references", type=int, default=0, metavar="R",
                   help="reference models for offline LiRA calibration, each trained on half of the non-canary "
                        "patients (default 0: raw scores)")
    p.add_argument("--reference-steps", type=int, default=0, metavar="K",
                   help="training steps per reference model (default train.steps of the config)")
    p.add_argument("--baseline", default="init", metavar="init|none|FILE",
                   help="without references, calibrate each score as its difference to these starting weights: init "
                        "(the round-0 initialisation of the config, default), none (raw scores), or shared weights")
    p.add_argument("--canaries", action="store_true", help="also the one-run epsilon audit of the site's canaries")
    p.add_argument("--canary-guess-fraction", type=float, default=1.0, metavar="F",
                   help="share of the canaries the one-run audit guesses (the F/2 highest scores 'in', the F/2 "
                        "lowest 'out', the rest abstain); fix it before looking at the scores (default 1: all)")
    p.add_argument("--views", type=int, default=4, help="augmented views per image for the feature scores")
    p.add_argument("--max-patients", type=int, default=0, metavar="N",
                   help="audit at most N members and N non-members (seeded choice; 0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the audit's views and splits (not secret)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default STATE/audit/report)")
    p.add_argument("--json", action="store_true", help="print audit.json's summary on stdout")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import time

    from xr0_core.audit.run import AuditError
    from xr0_core.audit.site_audit import audit_site

    if args.references < 0 or args.views < 1 or args.max_patients < 0:
        raise CLIError("--references and --max-patients must be >= 0 and --views >= 1")
    if not 0 < args.canary_guess_fraction <= 1:
        raise CLIError(f"--canary-guess-fraction must be in (0, 1], got {args.canary_guess_fraction}")
    t0 = time.perf_counter()
    ns = argparse.Namespace(checkpoint=args.model, preset=args.preset, overrides=args.overrides)
    from xr0_core.cli.evaluate import load_backbone_source

    cfg, factory, what = load_backbone_source(ns)
    if factory is None:
        raise CLIError("--model random audits nothing: give the released model")
    baseline = None
    if args.references == 0 and args.baseline != "none":
        if args.baseline == "init":
            from xr0_core.ssl.factory import initial_shared_state

            baseline = initial_shared_state(cfg)
        else:
            from safetensors.torch import load_file

            try:
                baseline = load_file(str(Path(args.baseline).expanduser()))
            except Exception as exc:  # noqa: BLE001 -- any unreadable file is the same user error
                raise CLIError(f"--baseline {args.baseline}: not a readable safetensors file ({exc})") from None
    try:
        result, out = audit_site(cfg, factory, getattr(factory, "weights", None), args.state_dir, args.data,
                                 manifest=args.manifest, references=args.references,
                                 reference_steps=args.reference_steps or cfg.train.steps, canaries=args.canaries,
                                 canary_guess_fraction=args.canary_guess_fraction, views=args.views, max_patients=args.max_patients, seed=args.seed,
                                 out=args.out, model=what, baseline=baseline)
    except AuditError as exc:
        raise CLIError(str(exc)) from None
    body = result.to_json()
    summary = {k: v for k, v in body.items() if k != "roc"}
    summary["wall_seconds"] = time.perf_counter() - t0
    if args.json:
        print_json(summary)
    else:
        print(f"xr0 audit: {what}; {result.membership.n_members} member and {result.membership.n_nonmembers} "
              f"non-member patients, {result.images} images; calibration: {result.calibration}", file=sys.stderr)
        for name, s in result.scores.items():
            ops = ", ".join(f"TPR@{p.target:.1%} FPR {p.tpr:.3f} [{p.tpr_ci[0]:.3f}, {p.tpr_ci[1]:.3f}]" for p in s.points[:2])
            print(f"  {name:16s} AUROC {s.auroc:.3f} [{s.auroc_ci[0]:.3f}, {s.auroc_ci[1]:.3f}]  {ops}  "
                  f"eps >= {s.epsilon_lower:.2f}", file=sys.stderr)
        led = f"{result.epsilon_ledger:.2f}" if result.epsilon_ledger is not None else "none (no DP release)"
        print(f"  epsilon: ledger (upper bound) {led}; membership lower bound {result.epsilon_lower:.2f} "
              f"(95 %, delta {result.delta:g})", file=sys.stderr)
        if result.canaries:
            c = result.canaries
            print(f"  one-run canary audit: {c['correct']}/{c['guesses']} guesses right on {c['canaries']} canaries "
                  f"-> epsilon >= {c['epsilon_lower']:.2f} (95 %)", file=sys.stderr)
        print(f"xr0 audit: wrote {out / 'audit.json'} and {out / 'roc.png'} ({summary['wall_seconds']:.0f} s)",
              file=sys.stderr)
    return 0
