"""Tiny labelled PNG "sites" for trainer and CLI tests (three shape classes standing in for anatomies)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

ANATOMIES = ("chest", "hand", "knee")


def toy_image(anatomy: str, rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """A float image [size, size] in [0, 1] whose layout depends on ``anatomy``."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.full((size, size), 0.1)
    j = lambda s: rng.uniform(-s, s)  # noqa: E731
    if anatomy == "chest":  # two dark lungs in a bright torso
        img += 0.5 * (((xx - 0.5) / 0.42) ** 2 + ((yy - 0.5) / 0.45) ** 2 < 1)
        for cx in (0.32 + j(0.04), 0.68 + j(0.04)):
            img -= 0.35 * (((xx - cx) / 0.13) ** 2 + ((yy - 0.45 - j(0.05)) / 0.3) ** 2 < 1)
    elif anatomy == "hand":  # five vertical fingers
        for k in range(5):
            cx = 0.2 + 0.15 * k + j(0.02)
            img += 0.6 * ((np.abs(xx - cx) < 0.035) & (yy > 0.15 + j(0.1)) & (yy < 0.85))
    else:  # two long bones meeting at a joint
        img += 0.6 * ((np.abs(xx - 0.5 - j(0.05)) < 0.12) & (yy < 0.45))
        img += 0.6 * ((np.abs(xx - 0.5 - j(0.05)) < 0.10) & (yy > 0.55))
    img += rng.normal(0, 0.03, img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def write_toy_site(root: Path, n: int, seed: int, *, size: int = 96, with_split: bool = False) -> Path:
    """Write ``n`` PNGs and a manifest.csv (path, patient_id, anatomy[, split]) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        anatomy = ANATOMIES[i % len(ANATOMIES)]
        name = f"img{i:04d}.png"
        Image.fromarray((toy_image(anatomy, rng, size) * 255).astype(np.uint8)).save(root / name)
        row = {"path": name, "patient_id": f"p{i:04d}", "anatomy": anatomy}
        if with_split:
            row["split"] = "test" if i % 5 == 4 else "train"
        rows.append(row)
    with (root / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root
