"""Does the backbone learn on real radiographs? Pretrain on the dev set's train split, probe every label.

    python bench/real_probe.py [--data ../shared/data/covid-chest-mhh] [--preset cpu-tiny]
                               [--steps 100,300,600] [--protocol test|cv] [--features cls|cls+mean]
                               [--set key=value ...] [--out bench/results/real_probe]

One SSL run on the images of ``split == train`` (no labels used), with schedules spanning the largest step
count; at step 0 (random init) and at every listed step the frozen student backbone is probed on every
``label_<name>`` column with the evaluation suite's linear probe (standardised features, L2 logistic
regression), next to the raw-pixel baseline (the same resized view, flattened, the same probe).

Protocols:

- ``test``: probe trained on the train split, scored on the test split (patients disjoint). Look at it once,
  after choosing a recipe;
- ``cv``: 5 x repeated, label-stratified 5-fold cross-validation by patient *within the train split*
  (out-of-fold rank percentiles averaged over the repeats, :func:`probe_scores`); use this to choose a
  recipe, so the test split stays untouched.

Every difference (pretrained - random init, pretrained - raw pixels) carries a paired, patient-level
bootstrap 95 % interval. Writes ``results.json``, ``table.md`` and ``curve.png`` (AUROC vs steps, one panel
per label, baselines as lines) to ``--out``, and prints the table. Timing: process CPU seconds as well as
wall seconds (the machine this ran on may be shared; CPU seconds do not count time spent waiting).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEV_SET = Path("shared") / "data" / "covid-chest-mhh"


def dev_set_path(repo: Path = REPO) -> Path:
    """``../shared/data/covid-chest-mhh`` next to the repository (CI, the main checkout); from a git worktree,
    next to the main checkout it belongs to (``.git`` is then a file naming ``<main>/.git/worktrees/<name>``)."""
    candidates = [repo.parent / DEV_SET]
    git = repo / ".git"
    if git.is_file() and git.read_text().startswith("gitdir:"):
        gitdir = Path(git.read_text().split(":", 1)[1].strip())
        if gitdir.parent.name == "worktrees":
            candidates.append(gitdir.parent.parent.parent.parent / DEV_SET)
    return next((c for c in candidates if (c / "manifest.csv").is_file()), candidates[0])

TEST, TRAIN = "test", "train"
CV_REPEATS = 5  # shuffled stratified group 5-fold splits averaged by the cv protocol


def _parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def probe_scores(x: np.ndarray, y: np.ndarray, split: list[str], groups: list[str], protocol: str,
                 seed: int, repeats: int = CV_REPEATS, c: float | str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Scores of the linear probe and the rows they belong to.

    The probe's ``C`` is chosen once, on the train rows, by 3-fold CV by patient
    (:func:`xr0_core.eval.linear_probe.choose_c`) unless ``c`` is a number: every feature set gets the same
    procedure (a fixed C = 0.5 under-regularises wide readouts and raw pixels: docs/ablations.md).

    ``test``: fit on ``split == train`` rows, score ``split == test`` rows. ``cv``: over the train rows,
    ``repeats`` times a shuffled 5-fold split by patient, stratified by the label (``StratifiedGroupKFold``);
    each held-out fold's scores are turned into within-fold rank percentiles (so the fold models' different
    intercepts do not mix into one ranking: pooled raw out-of-fold scores of a weak probe score *below*
    chance, an artefact), and each row's score is the mean of its percentiles over the repeats.

    Shapes: ``x [N, D]``, ``y [N]`` (int, -1 = missing) -> ``(scores [M] for a binary label or [M, K] class
    scores for K > 2 classes, rows [M])``.
    """
    from scipy.stats import rankdata
    from sklearn.model_selection import StratifiedGroupKFold

    from xr0_core.eval.linear_probe import choose_c, fit_predict

    has = y >= 0
    k = int(y[has].max()) + 1 if has.any() else 2
    k = max(k, 2)
    sp, g_all = np.array(split), np.array(groups)
    tr = np.flatnonzero(has & (sp == TRAIN))
    if c == "auto":
        c = choose_c(x[tr], y[tr], g_all[tr], k, seed, refine=False)  # 12 fits, not 18: CPU-bound bench

    def out(p: np.ndarray) -> np.ndarray:
        return p[:, 1] if k == 2 else p

    if protocol == "test":
        te = np.flatnonzero(has & (sp == TEST))
        return out(fit_predict(x[tr], y[tr], x[te], k, seed, c)), te
    rows = tr
    scores = np.zeros((len(rows),) if k == 2 else (len(rows), k))
    g = g_all[rows]
    for r in range(repeats):
        folds = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=(seed + r) % 2**32)
        for fit, held in folds.split(rows, y[rows], g):
            s_ = out(fit_predict(x[rows[fit]], y[rows[fit]], x[rows[held]], k, seed, c))
            scores[held] += rankdata(s_, axis=0) / len(s_) / repeats
    return scores, rows


def label_auroc(scores: np.ndarray, y: np.ndarray) -> float:
    """AUROC of binary scores ``[M]``, macro one-vs-rest AUROC of class scores ``[M, K]``."""
    from xr0_core.eval.metrics import binary_auroc, macro_auroc

    return binary_auroc(scores, y) if scores.ndim == 1 else macro_auroc(scores, y)


def paired_ci(a: np.ndarray, b: np.ndarray, y: np.ndarray, groups: list[str], seed: int,
              n_resamples: int = 1000) -> tuple[float, float]:
    """95 % percentile interval of ``label_auroc(a) - label_auroc(b)`` over resamples of whole patients
    (binary scores: :func:`xr0_core.eval.baseline.paired_bootstrap_auroc_ci`; class scores: the same
    resampling as :func:`_draws_ci`). Shapes: ``a, b [M]`` or ``[M, K]``, ``y [M]``, ``groups [M]``."""
    from xr0_core.eval.baseline import paired_bootstrap_auroc_ci

    if a.ndim == 1:
        return paired_bootstrap_auroc_ci(a, b, y, groups, seed=seed)
    return _draws_ci([a], [b], y, np.asarray(groups), seed, n_resamples)  # one draw: the same resampling


def permutation_null(x: np.ndarray, y: np.ndarray, split: list[str], groups: list[str], protocol: str, seed: int,
                     n: int) -> np.ndarray:
    """AUROC of the probe when the label carries no information: ``n`` times, the labels are shuffled between
    *patients* (each patient keeps one label for all its images, the label counts stay the same; train and test
    patients are shuffled within their split) and the same protocol is rerun.

    The spread of these numbers is the chance band of the protocol on this data: a difference between two
    feature sets that is small against it cannot be told apart from luck, whatever the point estimates say.

    Shapes: ``x [N, D]``, ``y [N]`` (-1 = missing) -> ``[n]`` AUROCs.
    """
    rng = np.random.default_rng(seed)
    g, sp = np.asarray(groups), np.asarray(split)
    out = []
    for _ in range(n):
        yp = np.full_like(y, -1)
        for part in (TRAIN, TEST):
            rows = np.flatnonzero((sp == part) & (y >= 0))
            patients = list(dict.fromkeys(g[rows]))
            label = {p: y[rows][g[rows] == p][0] for p in patients}
            shuffled = dict(zip(patients, rng.permutation([label[p] for p in patients])))
            yp[rows] = [shuffled[p] for p in g[rows]]
        scores, rows = probe_scores(x, yp, split, groups, protocol, seed)
        out.append(label_auroc(scores, yp[rows]))
    return np.array(out)


def feature_matrix(feats: Any, kind: str) -> np.ndarray:
    """Readout ``kind`` (:mod:`xr0_core.eval.readouts`: cls, mean, cls+mean, cls+grid<k>) of extracted
    features ``[N, R]``; ``tokens`` (CLS and every patch token, ``[N, (1 + g*g) D]``) as an upper reference."""
    import torch

    from xr0_core.eval.readouts import check_readout, readout

    if kind == "tokens":
        return torch.cat([feats.cls.float(), feats.patches.float().flatten(1)], dim=1).numpy()
    try:
        check_readout(kind)
    except ValueError as exc:
        raise SystemExit(f"--features: {exc} (or tokens)") from None
    return readout(feats.cls, feats.patches, kind).numpy()


def subsample_patients(records: list[Any], images: int, seed: int) -> list[Any]:
    """Records of a seeded random subset of patients holding about ``images`` images (all when 0 or more than
    there are): the SSL set of the curve over images. Order preserved."""
    if images <= 0 or images >= len(records):
        return records
    rng = np.random.default_rng(seed)
    patients = list(dict.fromkeys(r.patient_id or str(r.path) for r in records))
    keep, n = set(), 0
    by = {}
    for r in records:
        by.setdefault(r.patient_id or str(r.path), []).append(r)
    for pid in rng.permutation(patients):
        if n >= images:
            break
        keep.add(pid)
        n += len(by[pid])
    return [r for r in records if (r.patient_id or str(r.path)) in keep]


def budget_study(mats: dict[str, np.ndarray], y: np.ndarray, split: list[str], groups: list[str],
                 budgets: list[int], draws: int, seed: int, c: float | str = "auto") -> dict[str, Any]:
    """Label efficiency of the frozen probe: for each budget K, ``draws`` times K random labelled train
    patients (the same patients for every feature set), the probe fitted on their images only (C chosen
    inside them), scored on every test row.

    ``mats``: feature set name -> ``[N, D]`` (the first is compared with the others); ``y [N]`` (-1 missing).
    Returns per K: mean and sd over draws of each set's AUROC, and the mean paired difference first - other
    with a 95 % interval from resampling test patients (the same resample for every draw).
    """
    from xr0_core.eval.linear_probe import choose_c, fit_predict

    sp, g = np.array(split), np.array(groups)
    has = y >= 0
    k = max(int(y[has].max()) + 1, 2)
    tr_rows, te = np.flatnonzero(has & (sp == TRAIN)), np.flatnonzero(has & (sp == TEST))
    patients = list(dict.fromkeys(g[tr_rows]))
    names = list(mats)
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for budget in budgets:
        scores: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for _ in range(draws):
            for _attempt in range(100):  # a draw must hold every class at least twice (CV folds need them)
                chosen = set(rng.choice(patients, size=min(budget, len(patients)), replace=False).tolist())
                rows = tr_rows[np.isin(g[tr_rows], list(chosen))]
                cnt = np.bincount(y[rows], minlength=k)
                if (cnt[np.bincount(y[has], minlength=k) > 0] >= 2).all():
                    break
            for n in names:
                x = mats[n]
                cc = choose_c(x[rows], y[rows], g[rows], k, seed) if c == "auto" else float(c)
                p = fit_predict(x[rows], y[rows], x[te], k, seed, cc)
                scores[n].append(p[:, 1] if k == 2 else p)
        res: dict[str, Any] = {"patients": budget, "draws": draws, "auroc": {}, "vs": {}}
        for n in names:
            vals = [label_auroc(s_, y[te]) for s_ in scores[n]]
            res["auroc"][n] = {"mean": float(np.mean(vals)), "sd": float(np.std(vals))}
        first = names[0]
        for n in names[1:]:
            res["vs"][n] = {"diff": res["auroc"][first]["mean"] - res["auroc"][n]["mean"],
                            "ci95": list(_draws_ci(scores[first], scores[n], y[te], g[te], seed))}
        out[str(budget)] = res
    return out


def _draws_ci(a: list[np.ndarray], b: list[np.ndarray], y: np.ndarray, groups: np.ndarray, seed: int,
              n_resamples: int = 500) -> tuple[float, float]:
    """95 % interval of the mean over draws of ``AUROC(a_d) - AUROC(b_d)``, resampling whole test patients."""
    keys = np.unique(groups, return_inverse=True)[1]
    members = [np.flatnonzero(keys == i) for i in range(int(keys.max()) + 1)]
    rng = np.random.default_rng(seed)
    diffs = []
    while len(diffs) < n_resamples:
        rows = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
        if len(set(y[rows].tolist())) < 2:
            continue
        d = np.mean([label_auroc(sa[rows], y[rows]) - label_auroc(sb[rows], y[rows]) for sa, sb in zip(a, b)])
        if np.isfinite(d):
            diffs.append(d)
    return float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="dev set folder (default ../shared/data/covid-chest-mhh)")
    p.add_argument("--preset", default="cpu-tiny")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (cuda when there is one): where SSL and "
                   "feature extraction run; probes run on the CPU")
    p.add_argument("--steps", default="100,300,600", help="comma-separated step counts to probe at")
    p.add_argument("--protocol", choices=("test", "cv", "both"), default="test",
                   help="both: cv and test probes at every step (the table shows the first: cv)")
    p.add_argument("--features", default="cls+grid4", help="readouts, comma-separated: cls, mean, cls+mean, "
                   "cls+grid<k>, tokens (every token: an upper reference); the first makes the main table")
    p.add_argument("--labels", default="", help="comma-separated label names (default: all label_ columns)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--null", type=int, default=0, metavar="N",
                   help="also measure the protocol's chance band: N label shuffles between patients, probed on the "
                        "random-init features (permutation_null); 40 is enough for its 5-95 %% range")
    p.add_argument("--probe-c", default="auto", help="linear probe C: auto (3-fold CV by patient on the train "
                   "split, per feature set and label) or a number (0.5: the old fixed probe)")
    p.add_argument("--train-images", type=int, default=0, metavar="N",
                   help="SSL on the images of a seeded random subset of train patients holding about N images "
                        "(0: all; the probes still use every train label): the curve over images")
    p.add_argument("--label-budgets", default="", metavar="K,K",
                   help="also probe with only K labelled train patients (e.g. 50,200), frozen features of the "
                        "last step, random init and raw pixels, --budget-draws draws of K patients each")
    p.add_argument("--budget-draws", type=int, default=5)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "real_probe")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--save-weights", action="store_true", help="write weights-<step>.safetensors to --out")
    p.add_argument("--from-weights", type=Path, default=None, metavar="DIR",
                   help="no training: probe DIR/weights-<step>.safetensors of an earlier --save-weights run "
                        "(same preset and --set), e.g. to score the chosen recipe on the test split once")
    args = p.parse_args(argv)

    import torch

    from xr0_core.config import from_flat
    from xr0_core.data.images import read_image
    from xr0_core.data.index import index_site
    from xr0_core.eval.baseline import backbone_from_shared, pixel_features, random_init_backbone
    from xr0_core.eval.tasks.base import build_eval_set, extract
    from xr0_core.train.health import probe_health
    from xr0_core.train.trainer import SiteTrainer

    t_wall, t_cpu = time.perf_counter(), time.process_time()
    steps = sorted({int(s) for s in args.steps.split(",") if s.strip()})
    if not steps or steps[0] < 1:
        raise SystemExit("--steps: give positive step counts, e.g. 100,300,600")
    args.data = args.data or dev_set_path()
    if not (args.data / "manifest.csv").is_file():
        raise SystemExit(f"dev set not found at {args.data} (expected manifest.csv there); pass --data")
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    flat = {"preset": args.preset, "seed": args.seed, "train.device": device.type, **_parse_sets(args.overrides),
            "train.steps": steps[-1]}
    cfg = from_flat(flat)
    probe_c: float | str = "auto" if args.probe_c == "auto" else float(args.probe_c)
    records = index_site(args.data, verify_pixels=False).records
    train_records = subsample_patients([r for r in records if r.split != TEST], args.train_images, args.seed)
    decoded: dict[Any, Any] = {}

    def reader(path: Any) -> Any:  # decode each PNG once for the probe views and the SSL cache
        if path not in decoded:
            decoded[path] = read_image(path)
        return decoded[path]

    data = build_eval_set(records, cfg.model.img_size, cfg.seed, reader=reader)
    split = [TEST if r.split == TEST else TRAIN for r in data.records]
    groups = [r.patient_id or str(r.path) for r in data.records]
    names = sorted({n for r in data.records for n in r.labels})
    if args.labels:
        names = [n for n in names if n in set(args.labels.split(","))]
    labels = {n: np.array([int(r.labels.get(n, -1)) if r.labels.get(n) is not None else -1
                           for r in data.records]) for n in names}

    protocols = ["cv", "test"] if args.protocol == "both" else [args.protocol]

    def probe_all(x: np.ndarray, protocol: str | None = None) -> dict[str, dict[str, Any]]:
        out = {}
        for n in names:
            s, rows = probe_scores(x, labels[n], split, groups, protocol or protocols[0], cfg.seed, c=probe_c)
            out[n] = {"scores": s, "rows": rows, "auroc": label_auroc(s, labels[n][rows])}
        return out

    def probe_both(x: np.ndarray) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, float]]]:
        """The table's protocol (scores kept for intervals) and the AUROCs of every protocol, each fitted once."""
        first = probe_all(x)
        curve_ = {protocols[0]: {n: first[n]["auroc"] for n in names}}
        for pr in protocols[1:]:
            curve_[pr] = {n: r["auroc"] for n, r in probe_all(x, pr).items()}
        return first, curve_

    def with_ci(a: dict, b: dict) -> dict[str, Any]:
        out = {}
        for n in names:
            rows = a[n]["rows"]
            lo, hi = paired_ci(a[n]["scores"], b[n]["scores"], labels[n][rows], [groups[i] for i in rows],
                               seed=cfg.seed)
            out[n] = {"diff": a[n]["auroc"] - b[n]["auroc"], "ci95": [lo, hi]}
        return out

    print(f"real_probe: SSL on {len(train_records)} train images; {sum(r.split == TEST for r in records)} test; "
          f"labels {names}; preset {cfg.preset}; protocol {args.protocol}; features {args.features}",
          file=sys.stderr)
    pixel_x = pixel_features(data).cls.numpy()
    pixels, pixel_curve = probe_both(pixel_x)
    random_bb = random_init_backbone(cfg)
    kinds = [k.strip() for k in args.features.split(",") if k.strip()]

    def probe_kinds(feats: Any) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, Any]]:
        both = {k: probe_both(feature_matrix(feats, k)) for k in kinds}
        return {k: v[0] for k, v in both.items()}, {k: v[1] for k, v in both.items()}

    random_feats = extract(random_bb.to(device), data, patches=True, device=device)
    random_all, random_curve = probe_kinds(random_feats)
    random_res = random_all[kinds[0]]
    null: dict[str, dict[str, float]] = {}
    if args.null > 0:
        x0 = feature_matrix(random_feats, kinds[0])
        for n in names:
            draws = permutation_null(x0, labels[n], split, groups, protocols[0], cfg.seed, args.null)
            null[n] = {"n": args.null, "mean": float(draws.mean()), "sd": float(draws.std()),
                       "q05": float(np.quantile(draws, 0.05)), "q95": float(np.quantile(draws, 0.95))}
            print(f"  chance band of {n} ({protocols[0]}): mean {null[n]['mean']:.3f} sd {null[n]['sd']:.3f} "
                  f"5-95 % [{null[n]['q05']:.3f}, {null[n]['q95']:.3f}]", file=sys.stderr)
    trainer = None
    if args.from_weights is None:
        trainer = SiteTrainer(cfg, train_records, site="real-probe", device=device, reader=reader)
        len(trainer.cache)  # decode now
    decoded.clear()
    print(f"  setup (decode, baselines) {time.process_time() - t_cpu:.0f} CPU-s", file=sys.stderr)
    probe_x = torch.stack([v for v in data.views[[i for i, s in enumerate(split) if s == TRAIN][:64]]])
    curve: list[dict[str, Any]] = [{"step": 0, "health": probe_health(random_bb, probe_x),
                                    "auroc": {n: random_res[n]["auroc"] for n in names},
                                    "auroc_by_features": random_curve}]
    last_loss = float("nan")
    final: dict[str, Any] = {}
    for target in steps:
        t0 = time.perf_counter()
        if trainer is None:
            from safetensors.torch import load_file

            backbone = backbone_from_shared(cfg, load_file(str(args.from_weights / f"weights-{target}.safetensors")))
            last_loss = float("nan")
        else:
            m = trainer.train(target - trainer.step, start_step=trainer.step, total_steps=steps[-1])
            last_loss = m["loss"]
            backbone = trainer.model.student["backbone"]
        last_feats = extract(backbone.to(device), data, patches=True, device=device)
        final_all, final_curve = probe_kinds(last_feats)
        final = final_all[kinds[0]]
        row = {"step": target, "loss": last_loss, "health": probe_health(backbone, probe_x),
               "auroc": {n: final[n]["auroc"] for n in names}, "auroc_by_features": final_curve}
        if args.save_weights and trainer is not None:
            from safetensors.torch import save_file

            args.out.mkdir(parents=True, exist_ok=True)
            save_file(trainer.shared_state_dict(), str(args.out / f"weights-{target}.safetensors"))
        curve.append(row)
        print(f"  step {target}: loss {last_loss:.3f} ({time.perf_counter() - t0:.0f} wall-s, "
              f"{time.process_time() - t_cpu:.0f} CPU-s so far) "
              + " | ".join(f"{k}/{pr}: " + " ".join(f"{n} {v[pr][n]:.3f}" for n in names)
                           for k, v in row["auroc_by_features"].items() for pr in protocols)
              + f"  rankme-cls {row['health']['rankme-cls']:.1f}", file=sys.stderr)

    table = []
    vs_random, vs_pixels = with_ci(final, random_res), with_ci(final, pixels)
    for n in names:
        table.append({"label": n, "n_scored": int(len(final[n]["rows"])), "pretrained": final[n]["auroc"],
                      "random_init": random_res[n]["auroc"], "pixels": pixels[n]["auroc"],
                      "pretrained_minus_random": vs_random[n]["diff"], "ci95_vs_random": vs_random[n]["ci95"],
                      "pretrained_minus_pixels": vs_pixels[n]["diff"], "ci95_vs_pixels": vs_pixels[n]["ci95"]})
    budgets: dict[str, Any] = {}
    if args.label_budgets:
        ks = sorted({int(k) for k in args.label_budgets.split(",") if k.strip()})
        mats = {"pretrained": feature_matrix(last_feats, kinds[0]), "random_init": feature_matrix(random_feats, kinds[0]),
                "pixels": pixel_x}
        for n in names:
            budgets[n] = budget_study(mats, labels[n], split, groups, ks, args.budget_draws, cfg.seed, probe_c)
            for k, r in budgets[n].items():
                print(f"  {n} with {k} labelled patients: " + " ".join(
                    f"{m} {v['mean']:.3f}" for m, v in r["auroc"].items()), file=sys.stderr)
    cpu_s, wall_s = time.process_time() - t_cpu, time.perf_counter() - t_wall
    result = {"label_budgets": budgets, "probe_c": args.probe_c, "preset": cfg.preset, "overrides": _parse_sets(args.overrides), "steps": steps,
              "protocol": args.protocol, "features": args.features, "config_hash": cfg.hash(),
              "train_images": len(train_records), "images": len(data), "table": table, "curve": curve,
              "pixels_by_protocol": pixel_curve, "chance_band": null, "cpu_seconds": round(cpu_s, 1),
              "from_weights": str(args.from_weights) if args.from_weights else None, "wall_seconds": round(wall_s, 1), "torch_threads": torch.get_num_threads()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    md = render_table(result)
    (args.out / "table.md").write_text(md)
    if not args.no_plot:
        plot_curve(result, args.out / "curve.png")
    print(md)
    return 0


def _ci(ci: list[float]) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def render_table(result: dict[str, Any]) -> str:
    over = " ".join(f"{k}={v}" for k, v in result["overrides"].items()) or "-"
    source = (f"weights of {result['from_weights']} at steps {result['steps']}" if result.get("from_weights")
              else f"{result['steps'][-1]} steps")
    lines = [f"preset `{result['preset']}` (overrides: {over}), {source} on "
             f"{result['train_images']} train images; protocol `{result['protocol']}`, features "
             f"`{result['features']}`; {result['cpu_seconds']:.0f} CPU-s, {result['wall_seconds']:.0f} wall-s "
             f"({result['torch_threads']} torch threads)", "",
             "| label | n | pretrained | random init | raw pixels | pre - random (95% CI) | pre - pixels (95% CI) |",
             "|---|---|---|---|---|---|---|"]
    for r in result["table"]:
        lines.append(f"| {r['label']} | {r['n_scored']} | {r['pretrained']:.3f} | {r['random_init']:.3f} | "
                     f"{r['pixels']:.3f} | {r['pretrained_minus_random']:+.3f} {_ci(r['ci95_vs_random'])} | "
                     f"{r['pretrained_minus_pixels']:+.3f} {_ci(r['ci95_vs_pixels'])} |")
    curve = result["curve"]
    kinds = list(curve[0].get("auroc_by_features", {}))
    if len(kinds) > 1 or (kinds and result.get("pixels_by_protocol")):
        pr = next(iter(curve[0]["auroc_by_features"][kinds[0]]))
        labels = [r["label"] for r in result["table"]]
        lines += ["", f"AUROC by readout ({pr} protocol; step 0 = random init; raw pixels: "
                  + ", ".join(f"{n} {result['pixels_by_protocol'][pr][n]:.3f}" for n in labels) + ")", "",
                  "| readout | label | " + " | ".join(f"step {c['step']}" for c in curve) + " |",
                  "|---|---|" + "---|" * len(curve)]
        for k in kinds:
            for n in labels:
                lines.append(f"| {k} | {n} | " + " | ".join(f"{c['auroc_by_features'][k][pr][n]:.3f}" for c in curve) + " |")
    for label, res in sorted((result.get("label_budgets") or {}).items()):
        lines += ["", f"Label efficiency of `{label}` (frozen probe, `{result['features'].split(',')[0]}` readout, "
                  "mean over draws of K labelled train patients; test split)", "",
                  "| K patients | pretrained | random init | raw pixels | pre - random (95% CI) | pre - pixels (95% CI) |",
                  "|---|---|---|---|---|---|"]
        for k, r in res.items():
            a = r["auroc"]
            lines.append(f"| {k} | {a['pretrained']['mean']:.3f} | {a['random_init']['mean']:.3f} | "
                         f"{a['pixels']['mean']:.3f} | {r['vs']['random_init']['diff']:+.3f} "
                         f"{_ci(r['vs']['random_init']['ci95'])} | {r['vs']['pixels']['diff']:+.3f} "
                         f"{_ci(r['vs']['pixels']['ci95'])} |")
    for label, band in sorted((result.get("chance_band") or {}).items()):
        lines.append(f"\nChance band of `{label}` under this protocol ({band['n']} label shuffles between patients, "
                     f"random-init features): mean {band['mean']:.3f}, sd {band['sd']:.3f}, 5-95 % "
                     f"[{band['q05']:.3f}, {band['q95']:.3f}]. Differences small against sd cannot be told from luck.")
    return "\n".join(lines) + "\n"


def plot_curve(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["label"] for r in result["table"]]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    steps = [c["step"] for c in result["curve"]]
    for ax, r in zip(axes[0], result["table"]):
        n = r["label"]
        ax.plot(steps, [c["auroc"][n] for c in result["curve"]], "o-", label="pretrained")
        ax.axhline(r["random_init"], color="gray", ls="--", label="random init")
        ax.axhline(r["pixels"], color="tab:red", ls=":", label="raw pixels")
        band = (result.get("chance_band") or {}).get(n)
        if band:
            ax.axhspan(band["q05"], band["q95"], color="gray", alpha=0.15, label="chance band (5-95 %)")
        ax.set_title(f"label_{n} ({result['protocol']})", fontsize=9)
        ax.set_xlabel("SSL steps")
        ax.set_ylabel("AUROC")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
