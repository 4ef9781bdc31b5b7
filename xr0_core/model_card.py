"""The model card that travels with an exported backbone (D11): ``model_card.md`` in the Hugging Face Hub
format (YAML front matter + Markdown sections) and ``model_card.json`` (the same facts, for programs).

Two sources: a federation (:func:`build_card`, from the run summary and the coordinator's history, i.e. what
the coordinator legitimately knows: hospitals, image counts per anatomy when known, rounds, the ε each DP
hospital reported from its ledger, secure-aggregation counts, the last federated evaluation next to its
random-init baseline with intervals) and a local ``xr0 pretrain`` run (:func:`pretrain_card`). Both are
written by :func:`write_card`. No PHI: counts and aggregate numbers only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from xr0_core.atomic import atomic_write, atomic_write_json

LICENSE = "apache-2.0"  # the project's licence (pyproject); the weights' terms follow the hospitals' agreement
REQUIRED_SECTIONS = ("Model details", "Intended use", "Out-of-scope use", "Training data", "Training procedure",
                     "Evaluation", "Limitations")


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(float(v)) else None


def _ssl_health(history: list[dict[str, Any]]) -> dict[str, Any]:
    from xr0_core.train.health_verdict import assess_history

    v = assess_history(history)
    return {"status": v["status"], "sites": {n: {"status": s["status"], "reasons": s["reasons"]} for n, s in v["sites"].items()}}


def build_card(summary: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """The card of a federated run (JSON-able)."""
    from xr0_core.eval.summary import summary_rows

    train = [r for r in history if r["kind"] == "train"]
    evals = [r for r in history if r["kind"] == "evaluate"]
    sites: dict[str, dict[str, Any]] = {}
    for s in summary.get("sites") or []:
        sites[s["name"]] = {"images": s.get("images"), "by_anatomy": s.get("by_anatomy", {})}
    for r in train:
        for s in r["sites"]:
            entry = sites.setdefault(s["name"], {})
            entry["rounds_ok"] = entry.get("rounds_ok", 0) + (s["status"] == "ok")
            if "epsilon" in s["metrics"]:
                entry["epsilon"] = s["metrics"]["epsilon"]
                entry["delta"] = s["metrics"].get("privacy-delta")
                entry["budget"] = s["metrics"].get("privacy-budget")
            if s["status"] != "ok":
                entry["last_problem"] = f"round {r['round']}: {s['status']}: {s['reason']}"
    cfg = summary.get("config", {}) or {}
    secagg_rounds = [r["metrics"] for r in train if "secagg-uploads" in r["metrics"]]
    rows = [{k: v for k, v in row.items() if k != "per_site"} for row in summary_rows(history)]
    return {
        "kind": "federated",
        "model": summary.get("backbone", {}),
        "preset": cfg.get("preset"),
        "data_source": summary.get("data_source", "given"),
        "rounds_completed": summary.get("rounds_completed"),
        "local_steps_per_round": cfg.get("train.local-steps"),
        "secure_aggregation": bool(cfg.get("secagg.enabled")),
        "secagg": {"rounds": len(secagg_rounds),
                   "dropped": sum(m.get("secagg-dropped", 0) for m in secagg_rounds),
                   "clipped": sum(m.get("secagg-clipped", 0) for m in secagg_rounds),
                   "max_error_bound": max((m.get("secagg-error-bound", 0) for m in secagg_rounds), default=None),
                   "quant_range": cfg.get("secagg.quant-range"), "quant_bits": cfg.get("secagg.quant-bits")}
        if cfg.get("secagg.enabled") else None,
        "differential_privacy": bool(cfg.get("privacy.enabled")),
        "client_level_dp": bool(cfg.get("privacy.client-level")),
        "sites": sites,
        "evaluation": {"round": evals[-1]["round"], "metrics": evals[-1]["metrics"]} if evals else None,
        "ssl_health": _ssl_health(history),
        "nothing_to_evaluate": bool(evals) and all(s["status"] == "empty" for r in evals for s in r["sites"]),
        "summary": rows,
        "privacy_audit": _audit(history),
    }


def _audit(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per hospital, the audit scalars it released (:func:`xr0_core.audit.summary.audit_rows`), JSON-able."""
    from xr0_core.audit.summary import audit_rows

    rows = audit_rows(history)
    for r in rows:
        for sc in r["scores"].values():
            sc["tpr"] = {f"{f:g}": list(v) for f, v in sc["tpr"].items()}
            sc["auroc_ci"] = list(sc["auroc_ci"])
    return rows


def pretrain_card(summary: dict[str, Any], cfg_flat: dict[str, Any], export: dict[str, Any],
                  by_anatomy: dict[str, int]) -> dict[str, Any]:
    """The card of a local ``xr0 pretrain`` run (``summary`` is its ``summary.json``)."""
    rows = []
    for key, label in (("knn_accuracy", "anatomy k-NN"), ("linear_accuracy", "anatomy linear probe")):
        pre, rnd = _num(summary.get(key)), _num(summary.get(f"{key}_random"))
        if pre is None or rnd is None:
            continue
        ci = summary.get("knn_gain_ci95") if key == "knn_accuracy" else None
        low, high = (ci if ci and len(ci) == 2 else (math.nan, math.nan))
        from xr0_core.eval.summary import verdict

        row = {"family": "anatomy probe", "task": label, "metric": "accuracy", "pretrained": pre,
               "random": rnd, "diff": pre - rnd, "low": low, "high": high,
               "verdict": verdict("accuracy", low, high), "units": summary.get("knn_test"), "hospitals": 1}
        pix = _num((summary.get("baseline_pixels") or {}).get(key))
        if pix is not None:  # the raw-pixel baseline of the same probe (xr0 pretrain --json: baseline_pixels)
            ci_pix = summary.get("knn_gain_vs_pixels_ci95") if key == "knn_accuracy" else None
            lo_p, hi_p = (ci_pix if ci_pix and len(ci_pix) == 2 else (math.nan, math.nan))
            row["pixels"] = pix
            row["vs_pixels"] = {"diff": pre - pix, "low": lo_p, "high": hi_p,
                                "verdict": verdict("accuracy", lo_p, hi_p)}
        rows.append(row)
    return {
        "kind": "local",
        "model": export,
        "preset": cfg_flat.get("preset"),
        "data_source": "given",
        "steps": summary.get("steps"),
        "secure_aggregation": False,
        "secagg": None,
        "differential_privacy": bool(cfg_flat.get("privacy.enabled")),
        "client_level_dp": False,
        "sites": {"local data": {"images": summary.get("num_train_images"), "by_anatomy": by_anatomy,
                                 "heldout": summary.get("num_heldout_images")}},
        "evaluation": None,
        "nothing_to_evaluate": False,
        "summary": rows,
        "loss": {"initial": summary.get("initial_loss"), "final": summary.get("final_loss")},
    }


# ---------------------------------------------------------------------------------------- markdown


def _yaml_value(v: Any) -> str:
    # JSON scalars are valid YAML (double-quoted strings, numbers, true/false/null).
    return json.dumps(v)


def front_matter(card: dict[str, Any]) -> str:
    """YAML front matter the Hub reads: license, library, pipeline, tags, metrics."""
    tags = ["xr0", "x-ray", "radiography", "medical-imaging", "self-supervised", "dinov2", "ibot", "vision-transformer",
            "timm"]
    if card["kind"] == "federated":
        tags += ["federated-learning", "flower"]
    if card["differential_privacy"] or card["client_level_dp"]:
        tags.append("differential-privacy")
    if card["secure_aggregation"]:
        tags.append("secure-aggregation")
    metrics = sorted({r["metric"] for r in card["summary"]}) or ["accuracy"]
    lines = ["---", f"license: {LICENSE}", "library_name: timm", "pipeline_tag: image-feature-extraction", "tags:"]
    lines += [f"- {_yaml_value(t)}" for t in tags]
    lines.append("metrics:")
    lines += [f"- {_yaml_value(m)}" for m in metrics]
    lines.append("---")
    return "\n".join(lines)


def _fmt(v: Any, spec: str = ".3f") -> str:
    n = _num(v)
    return format(n, spec) if n is not None else "-"


def _md_table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
    return out


def card_markdown(card: dict[str, Any]) -> str:
    """The Markdown card: front matter, then :data:`REQUIRED_SECTIONS` in order."""
    model = card.get("model") or {}
    fed = card["kind"] == "federated"
    title = "XR-0 federated backbone" if fed else "XR-0 backbone (local pretraining)"
    n_sites = len(card["sites"])
    lines = [front_matter(card), "", f"# {title}", "",
             ("A ViT backbone for radiographs pretrained with DINOv2-style self-supervision (DINO on the CLS token, "
              "iBOT on masked patches, EMA teacher, multi-crop) following XR-0 (GE HealthCare, 2025), "
              + (f"by {n_sites} hospitals with XR-0 Federated (Flower): images never left a hospital; only weights "
                 "and scalar metrics did." if fed else "on one site's data with `xr0 pretrain`.")), ""]
    kwargs = model.get("timm_kwargs", {})
    lines += ["## Model details", "",
              f"- architecture: timm `{model.get('timm_name', '?')}` (preset `{card.get('preset')}`), "
              f"{model.get('input', {}).get('channels', 1)} input channel, image size {kwargs.get('img_size', '?')}",
              f"- input: {model.get('input', {}).get('range', 'grey-level radiograph in [0, 1]')}; features: "
              f"{model.get('features', 'CLS token')}",
              f"- weights: `{model.get('weights', 'backbone.safetensors')}` (safetensors, float32), created as "
              "described in `backbone.json`; load with `xr0_core.export.load_exported(path)` or timm "
              "(`timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=dict(file=path, ...))`)",
              f"- license: {LICENSE} (code); use of the weights is subject to the contributing sites' agreement", ""]
    lines += ["## Intended use", "",
              "- research: a frozen or fine-tuned feature extractor for X-ray downstream tasks (classification, "
              "retrieval, segmentation, landmarks, grounding) evaluated on the user's own labelled data;",
              "- a starting point for further (federated) pretraining on more hospitals.", ""]
    lines += ["## Out-of-scope use", "",
              "- diagnosis, triage or any clinical decision without a separate validation and regulatory clearance;",
              "- modalities other than projection radiographs (CT, MR, ultrasound), and anatomies absent from the "
              "training data below;",
              "- attempts to recover training images or patient attributes from the weights.", ""]
    lines += ["## Training data", ""]
    if card.get("data_source") == "synthetic":
        lines += ["Synthetic phantom hospitals (XR-0 Federated's generator), written as real DICOM files: the "
                  "numbers below say the pipeline works, not that the model is useful on real radiographs.", ""]
    anatomies = sorted({a for s in card["sites"].values() for a in (s.get("by_anatomy") or {})})
    site_rows = []
    for name, s in sorted(card["sites"].items()):
        mix = ", ".join(f"{a} {s.get('by_anatomy', {}).get(a, 0)}" for a in anatomies
                        if s.get("by_anatomy", {}).get(a)) or "unknown"
        site_rows.append([name, s.get("images", "?"), mix] + ([s.get("rounds_ok", 0)] if fed else []))
    lines += _md_table(["site", "images", "anatomy mix"] + (["rounds trained"] if fed else []), site_rows)
    lines += ["", "Counts only: no image, report, patient identifier or other record left any site.", ""]
    lines += ["## Training procedure", ""]
    if fed:
        lines += [f"- {card.get('rounds_completed')} federated rounds x {card.get('local_steps_per_round')} local "
                  "SSL steps per hospital, FedAvg-style aggregation of the shared student backbone and heads "
                  "(teacher, centers and optimizer state stayed at each hospital)"]
    else:
        lines += [f"- {card.get('steps')} SSL steps; loss {_fmt((card.get('loss') or {}).get('initial'))} -> "
                  f"{_fmt((card.get('loss') or {}).get('final'))}"]
    if card["differential_privacy"] or card["client_level_dp"]:
        level = "per patient (DP-SGD)" if card["differential_privacy"] else "per hospital update (client-level)"
        lines += [f"- differential privacy {level}; each hospital's cumulative guarantee from its own ledger:"]
        for name, s in sorted(card["sites"].items()):
            if "epsilon" in s:
                lines.append(f"  - {name}: (ε = {_fmt(s['epsilon'])}, δ = {s.get('delta')})-DP"
                             + (f", budget {_fmt(s.get('budget'), '.2f')}" if s.get("budget") is not None else ""))
    else:
        lines += ["- no differential privacy: the weights carry no formal privacy guarantee"]
    sa = card.get("secagg")
    if card["secure_aggregation"] and sa:
        lines += [f"- secure aggregation (SecAgg+): the coordinator saw only sums; {sa['rounds']} rounds, "
                  f"{int(sa['dropped'])} dropped uploads, {int(sa['clipped'])} clipped coordinates (range "
                  f"±{sa.get('quant_range')}, {sa.get('quant_bits')} bits), largest error bound of the mean "
                  f"{_fmt(sa.get('max_error_bound'), '.3g')}"]
    elif fed:
        lines += ["- plain aggregation: the coordinator saw each hospital's update"]
    lines.append("")
    lines += ["## Evaluation", ""]
    if card["summary"]:
        lines += ["Frozen backbone; light heads trained on each site's train split, scored on its test split. "
                  "Random init = the same architecture untrained, same heads and rows; raw pixels = the same "
                  "resized image, flattened, same head (classification and retrieval). Interval: 95 %, paired "
                  "bootstrap over patients (pooled across hospitals).", ""]
        def interval(iv: dict[str, Any] | None) -> str:
            return (f"{_fmt(iv.get('diff'), '+.3f')} [{_fmt(iv['low'], '+.3f')}, {_fmt(iv['high'], '+.3f')}]"
                    if iv and _num(iv.get("low")) is not None else (_fmt(iv.get("diff"), "+.3f") if iv else "-"))

        lines += _md_table(["task", "metric", "pretrained", "random init", "minus random [95 % interval]", "verdict",
                            "raw pixels", "minus pixels [95 % interval]", "vs pixels"],
                           [[f"{r['family']}/{r['task']}", r["metric"], _fmt(r["pretrained"]), _fmt(r["random"]),
                             interval(r), r["verdict"], _fmt(r.get("pixels")) if _num(r.get("pixels")) is not None
                             else "-", interval(r.get("vs_pixels")),
                             (r.get("vs_pixels") or {}).get("verdict", "-")] for r in card["summary"]])
    elif card.get("nothing_to_evaluate"):
        lines += ["Nothing to evaluate: no site had labelled held-out images."]
    else:
        lines += ["Not evaluated in this run."]
    lines.append("")
    if card.get("privacy_audit"):
        lines += ["### Privacy audit", "",
                  "Each hospital audited the global weights on its own patients (membership inference per patient, "
                  "`eval.audit`); only these scalars left it. ε (ledger) is the guarantee, an upper bound; the "
                  "lower bounds are 95 % empirical ones (docs/privacy.md). ROC on log axes: `audit_roc.png`.", ""]
        from xr0_core.audit.summary import ci

        audit_lines = []
        for r in card["privacy_audit"]:
            if r.get("skipped"):
                audit_lines.append([r["site"], _fmt(r.get("epsilon_ledger")), "skipped (no held-out patients)",
                                    "", "", "", "", ""])
                continue
            for name, sc in r["scores"].items():
                t = sc["tpr"]
                audit_lines.append([r["site"], _fmt(r.get("epsilon_ledger")), _fmt(r.get("epsilon_lower")),
                                    _fmt(r.get("epsilon_canary")), name,
                                    f"{_fmt(sc['auroc'])} [{_fmt(sc['auroc_ci'][0])}, {_fmt(sc['auroc_ci'][1])}]",
                                    ci(*t["0.001"], 3) if "0.001" in t else "",
                                    ci(*t["0.01"], 3) if "0.01" in t else ""])
        lines += _md_table(["hospital", "ε (ledger)", "ε lower (membership)", "ε lower (canaries)", "score",
                            "AUROC [95 %]", "TPR @ 0.1 % FPR [95 %]", "TPR @ 1 % FPR [95 %]"], audit_lines)
        lines.append("")
    lines += ["## Limitations", ""]
    lims = ["held-out sets are small: read the intervals, not the point estimates;",
            "the evaluation uses light heads on frozen features, not fine-tuning;"]
    if card.get("data_source") == "synthetic":
        lims.insert(0, "trained and evaluated on synthetic phantoms: no claim about real radiographs;")
    if any(r["verdict"] in ("not shown", "no interval", "too few patients") for r in card["summary"]):
        lims.append("where the verdict is 'not shown', pretraining did not measurably beat random init here;")
    if any((r.get("vs_pixels") or {}).get("verdict") in ("worse", "not shown") for r in card["summary"]):
        lims.append("where 'vs pixels' is not 'better', the backbone did not measurably beat a linear model on the "
                    "raw resized image: do not use it for that task in place of one;")
    if card["differential_privacy"]:
        lims.append("DP noise costs accuracy; ε holds for the privacy unit stated above, at each site's δ;")
    lims.append("bias: the anatomy, scanner and population mix of the contributing sites is all the model saw.")
    lines += [f"- {t}" for t in lims]
    return "\n".join(lines) + "\n"


def write_card(out_dir: Path, card: dict[str, Any]) -> Path:
    """``model_card.json`` and ``model_card.md`` into ``out_dir``; returns the Markdown path."""
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "model_card.json", card)
    text = card_markdown(card)
    path = out_dir / "model_card.md"
    atomic_write(path, lambda p: p.write_text(text))
    return path


def write_model_card(out_dir: Path, summary: dict[str, Any], history: list[dict[str, Any]]) -> Path:
    """The card of a federated run (:func:`build_card`)."""
    return write_card(out_dir, build_card(summary, history))


def parse_card(text: str) -> tuple[dict[str, Any], list[str]]:
    """(front matter, level-2 section titles) of a model card; raises ValueError when the front matter is
    missing or not YAML. What the Hub reads; used by tests and by anyone checking a card before upload."""
    import yaml

    if not text.startswith("---\n"):
        raise ValueError("a Hugging Face model card starts with '---' and YAML front matter")
    head, sep, body = text[4:].partition("\n---\n")
    if not sep:
        raise ValueError("the YAML front matter is not closed by '---'")
    meta = yaml.safe_load(head)
    if not isinstance(meta, dict):
        raise ValueError("the front matter is not a YAML mapping")
    return meta, [ln[3:].strip() for ln in body.splitlines() if ln.startswith("## ")]
