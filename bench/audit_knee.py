"""The privacy audit on a real dev set: a non-DP and a DP (epsilon = 8) cpu-tiny backbone trained at one
"hospital" (knee-oa-dev, patients as units), each audited with ``xr0 audit``'s code on its own members and
held-out patients.

    python bench/audit_knee.py [--data ../shared/data/knee-oa-dev] [--patients 100] [--steps 80]
                               [--dp-steps 40] [--epsilon 8] [--out bench/results/audit_knee.json]

Members: ``--patients`` patients of the train split (both knees of each), trained on for ``--steps`` (DP:
``--dp-steps``, noise calibrated so the one round spends ``--epsilon`` at delta 1e-5); non-members: as many
patients of the test split, never trained on. Scores are calibrated as the difference to the round-0
initialisation the training started from (``--baseline init``). Prints a Markdown table and writes the JSON
summaries (no ROC points) to ``--out``; each model's ``audit.json`` (with its ROC) and ``roc.png`` (log axes) go to
``<out without .json>/<mode>/``. Keep it short: 2 shared CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_probe import TEST, dev_set_path  # noqa: E402

KNEE = Path("shared") / "data" / "knee-oa-dev"


def knee_path() -> Path:
    return dev_set_path().parent / "knee-oa-dev"


def choose_patients(records, n: int, seed: int):
    """``n`` train-split and ``n`` test-split patients (seeded), all their images."""
    rng = np.random.default_rng(seed)
    out = []
    for side in (lambda r: r.split != TEST, lambda r: r.split == TEST):
        pats = sorted({r.patient_id for r in records if side(r)})
        keep = set(rng.permutation(pats)[:n].tolist())
        out += [r for r in records if side(r) and r.patient_id in keep]
    return out


def train_site(cfg, records, state: Path, steps: int, epsilon: float | None):
    """One local round of ``steps`` steps at a site whose policy is DP at ``epsilon`` (None: no DP)."""
    from xr0_core.site.policy import SitePolicy, policy_path, save_policy, with_values
    from xr0_core.site.round import run_site_round, site_trainer
    from xr0_core.ssl.factory import initial_shared_state
    from xr0_core.train.round_state import RoundSpec

    policy = SitePolicy()
    if epsilon is not None:
        policy = with_values(policy, {"privacy.budget": epsilon, "privacy.run-cap": "all", "privacy.delta": 1e-5,
                                      "release.epsilon": "exact"})
    policy = save_policy(policy, policy_path(state))
    train = [r for r in records if r.split != TEST]
    if epsilon is not None:
        # what a DP site trains on (client/runtime.py): its private partition, keyed by its identity, which
        # the audit reads back to know who the members are (with split = test rows: those patients held out)
        from xr0_core.data.splits import private_partition
        from xr0_core.site.state import ensure_identity

        train = private_partition(records, ensure_identity(state, "knee").site_id)[0]
    trainer = site_trainer(cfg, train, site="knee")
    len(trainer.cache)  # decode now (the cache is lazy) so the trained image count is known
    shared, metrics = run_site_round(trainer, initial_shared_state(cfg), RoundSpec(1, 0, steps, steps, "audit"),
                                     state, policy)
    return shared, {**metrics, "train_images": len(trainer.cache.kept)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--patients", type=int, default=100)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--dp-steps", type=int, default=40)
    p.add_argument("--epsilon", type=float, default=8.0)
    p.add_argument("--preset", default="cpu-tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", default="plain,dp")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "audit_knee.json")
    args = p.parse_args(argv)

    from xr0_core.audit.site_audit import audit_site
    from xr0_core.config import from_flat
    from xr0_core.data.index import index_site
    from xr0_core.eval.baseline import backbone_from_shared
    from xr0_core.ssl.factory import initial_shared_state

    data = args.data or knee_path()
    records = choose_patients(index_site(data, verify_pixels=False).records, args.patients, args.seed)
    results = {}
    for mode in args.modes.split(","):
        dp = mode == "dp"
        cfg = from_flat({"preset": args.preset, "seed": args.seed, "train.device": "cpu", "train.health-every": 0,
                         **({"privacy.enabled": True} if dp else {})})
        with tempfile.TemporaryDirectory() as tmp:
            state = Path(tmp) / "state"
            t0, c = time.perf_counter(), time.process_time()
            shared, metrics = train_site(cfg, records, state, args.dp_steps if dp else args.steps,
                                         args.epsilon if dp else None)
            t_train, c_train = time.perf_counter() - t0, time.process_time() - c
            c0 = time.process_time()
            result, _ = audit_site(cfg, lambda: backbone_from_shared(cfg, shared), shared, state, records=records,
                                   baseline=initial_shared_state(cfg), out=args.out.with_suffix("") / mode,
                                   seed=args.seed,
                                   model=f"{args.preset} {'DP eps=%g' % args.epsilon if dp else 'non-DP'}")
        body = {k: v for k, v in result.to_json().items() if k != "roc"}
        body.update({"train_seconds": t_train, "train_cpu_seconds": c_train, "audit_cpu_seconds": time.process_time() - c0,
                     "train_images": metrics["train_images"], "steps": args.dp_steps if dp else args.steps,
                     "train_loss": metrics.get("loss"), "load_avg": os.getloadavg()})
        results[mode] = body
        print(f"{mode}: trained {body['steps']} steps in {t_train:.0f} s; audit {result.seconds:.0f} s", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"data": "knee-oa-dev", "patients_per_side": args.patients, "preset": args.preset,
                                    "results": results}, indent=2, default=float) + "\n")
    print("| model | ε ledger | members / non-members | score | AUROC [95 %] | TPR@1 % FPR [95 %] | ε lower (95 %) |")
    print("|---|---|---|---|---|---|---|")
    for mode, b in results.items():
        for name, s in b["scores"].items():
            op = next(o for o in s["operating_points"] if o["target_fpr"] == 0.01)
            eps = b["epsilon_ledger"]
            print(f"| {b['model']} | {'%.2f' % eps if eps is not None else '-'} | {b['members']} / {b['non_members']} | "
                  f"{name} | {s['auroc']:.3f} [{s['auroc_ci95'][0]:.3f}, {s['auroc_ci95'][1]:.3f}] | "
                  f"{op['tpr']:.3f} [{op['tpr_ci95'][0]:.3f}, {op['tpr_ci95'][1]:.3f}] | {s['epsilon_lower']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
