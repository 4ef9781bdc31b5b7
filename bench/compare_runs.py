"""Side-by-side evaluation of finished ``xr0 simulate`` runs (e.g. DP vs DP + secure aggregation).

Usage::

    python bench/compare_runs.py --run "DP=out/dp" --run "DP+SecAgg=out/dp-secagg" --out compare.html \
        [--into out/dp-secagg]      # also show the table in that run's report.html

For each run it reads ``metrics.json`` (the last federated evaluation: pooled over hospitals, example-
weighted, with the random-init baseline measured in the same dispatch) and ``run.json``, and writes one
HTML table plus the same numbers as JSON next to it. Only anatomy / classification / retrieval / segmentation
headline metrics are listed; the per-run report.html holds everything.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HEADLINE = (
    "classification/anatomy/linear-accuracy",
    "classification/anatomy/random/linear-accuracy",
    "classification/anatomy/knn-accuracy",
    "classification/anatomy/random/knn-accuracy",
    "retrieval/image-image/anatomy/recall@1",
    "segmentation/mask/dice-mean",
    "knn-anatomy",  # runs from before the anatomy probe became the suite's classification/anatomy task
    "linear-anatomy",
)


def last_evaluation(out: Path) -> dict[str, float]:
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    evals = [r for r in rounds if r["kind"] == "evaluate"]
    if not evals:
        raise SystemExit(f"{out}/metrics.json has no evaluation round")
    return evals[-1]["metrics"]


def epsilons(out: Path) -> str:
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    train = [r for r in rounds if r["kind"] == "train"]
    eps = [s["metrics"]["epsilon"] for s in train[-1]["sites"] if "epsilon" in s["metrics"]] if train else []
    return f"{min(eps):.2f}-{max(eps):.2f}" if eps else "no DP"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=DIR")
    parser.add_argument("--out", type=Path, default=Path("compare.html"))
    parser.add_argument("--into", type=Path, default=None, metavar="DIR",
                        help="also put the table into that run's report.html (its comparison section)")
    args = parser.parse_args()
    rows = []
    for item in args.run:
        label, _, folder = item.partition("=")
        out = Path(folder)
        cfg = json.loads((out / "run.json").read_text())["config"]
        metrics = last_evaluation(out)
        rows.append({"run": label, "secagg": cfg.get("secagg.enabled"), "dp": cfg.get("privacy.enabled"),
                     "epsilon": epsilons(out), **{k: metrics[k] for k in HEADLINE if k in metrics}})
    from xr0_core.htmlpage import CSS
    from xr0_core.htmlpage import table as _table

    names = [k for k in HEADLINE if any(k in r for r in rows)]
    html = (f"<!doctype html><html><head><meta charset='utf-8'><style>{CSS}</style></head><body>"
            "<h1>XR-0 runs side by side</h1><p class='note'>last federated evaluation, example-weighted over "
            "hospitals; random = random-init backbone in the same dispatch</p>"
            + _table(["run", "secagg", "dp", "epsilon"] + names,
                     [[r["run"], r["secagg"], r["dp"], r["epsilon"]] + [r.get(n, "") for n in names] for r in rows])
            + "</body></html>")
    args.out.write_text(html)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    for r in rows:
        print(json.dumps(r))
    if args.into is not None:
        from xr0_core.report import rewrite_outputs

        summary = json.loads((args.into / "run.json").read_text())
        summary["comparison"] = [{"backbone": r["run"] + ("" if r["epsilon"] == "no DP" else f" (epsilon {r['epsilon']})"),
                                  **{k: v for k, v in r.items() if k in names}} for r in rows]
        rewrite_outputs(args.into, summary)


if __name__ == "__main__":
    main()
