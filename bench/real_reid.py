"""Patient re-identification on the dev set's test split: a label-free check of what frozen features keep.

    python bench/real_reid.py --from-weights DIR [--steps 100,300,600] [--preset cpu-tiny] [--set key=value ...]

``DIR`` holds ``weights-<step>.safetensors`` of a ``bench/real_probe.py --save-weights`` run (same preset and
``--set``). For every test-split image of a patient with at least two test images: is its nearest other
test image (cosine of centred features) from the same patient? Recall@1 for raw pixels, random init and the
pretrained weights (CLS and CLS + mean patch), and pretrained minus each baseline with a paired bootstrap
95 % interval over patients. Prints a Markdown table (docs/ablations.md records one).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_probe import TEST, _parse_sets, dev_set_path, feature_matrix  # noqa: E402


def same_patient_top1(x: np.ndarray, patients: np.ndarray) -> np.ndarray:
    """1.0 where the nearest other row (cosine of centred features) has the same patient, else 0.0.

    Shapes: ``x [N, D]``, ``patients [N]`` -> ``[N]``.
    """
    import torch

    t = torch.as_tensor(x, dtype=torch.float32)
    t = torch.nn.functional.normalize(t - t.mean(0), dim=1)
    sim = t @ t.T
    sim.fill_diagonal_(-float("inf"))
    return (patients[sim.argmax(1).numpy()] == patients).astype(float)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--from-weights", type=Path, required=True, metavar="DIR")
    p.add_argument("--steps", default="100,300,600")
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--preset", default="cpu-tiny")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from safetensors.torch import load_file

    from xr0_core.config import from_flat
    from xr0_core.data.index import index_site
    from xr0_core.eval.baseline import backbone_from_shared, pixel_features, random_init_backbone
    from xr0_core.eval.metrics import paired_bootstrap
    from xr0_core.eval.tasks.base import build_eval_set, extract

    cfg = from_flat({"preset": args.preset, "seed": args.seed, "train.device": "cpu", **_parse_sets(args.overrides)})
    data_dir = args.data or dev_set_path()
    records = [r for r in index_site(data_dir, verify_pixels=False).records if r.split == TEST]
    data = build_eval_set(records, cfg.model.img_size, cfg.seed)
    patients = np.array([r.patient_id or str(r.path) for r in data.records])
    queries = np.array([(patients == q).sum() >= 2 for q in patients])
    if not queries.any():
        raise SystemExit("no test patient has two images: nothing to re-identify")

    hits = {("raw pixels", "-"): same_patient_top1(pixel_features(data).cls.numpy(), patients)[queries]}
    random_feats = extract(random_init_backbone(cfg), data, patches=True)
    for kind in ("cls", "cls+mean"):
        hits[("random init", kind)] = same_patient_top1(feature_matrix(random_feats, kind), patients)[queries]
    steps = [int(s) for s in args.steps.split(",") if s.strip()]
    for step in steps:
        shared = load_file(str(args.from_weights / f"weights-{step}.safetensors"))
        feats = extract(backbone_from_shared(cfg, shared), data, patches=True)
        for kind in ("cls", "cls+mean"):
            hits[(f"pretrained {step}", kind)] = same_patient_top1(feature_matrix(feats, kind), patients)[queries]

    groups = list(patients[queries])
    print(f"{int(queries.sum())} queries from {len(set(groups))} test patients with >= 2 images\n")
    print("| features | kind | recall@1 | minus random init (95% CI) | minus raw pixels (95% CI) |")
    print("|---|---|---|---|---|")
    for (name, kind), h in hits.items():
        cells = ["", ""]
        if name.startswith("pretrained"):
            for i, base in enumerate((hits[("random init", kind)], hits[("raw pixels", "-")])):
                b = paired_bootstrap(h, base, groups, seed=args.seed)
                cells[i] = f"{b['diff']:+.3f} [{b['low']:+.3f}, {b['high']:+.3f}]"
        print(f"| {name} | {kind} | {h.mean():.3f} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
