"""The audit's ROC on log axes (``roc.png`` next to ``audit.json``): at low false-positive rates, where a
membership attack matters, a linear ROC hides everything (Carlini et al. 2022)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


def write_roc_png(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, *,
                  title: str = "membership inference ROC", points: Mapping[str, Sequence[tuple[float, float]]] | None = None,
                  ) -> Path:
    """One log-log ROC per score (``curves[name] = (fpr, tpr)``), the chance diagonal, and optional
    ``points[name] = [(fpr, tpr), ...]`` (operating points only, e.g. the scalars a hospital released).

    Rates of 0 are drawn at the axis floor ``1 / (10 n)`` (log axes cannot show 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(4.6, 4.2), dpi=110)
    floor = 1e-3
    for fpr, _ in curves.values():
        if len(fpr) > 1:
            floor = min(floor, 1.0 / (10 * max(1, len(fpr) - 1)))
    for name, (fpr, tpr) in curves.items():
        f, t = np.maximum(np.asarray(fpr, float), floor), np.maximum(np.asarray(tpr, float), floor)
        ax.step(f, t, where="post", label=name, lw=1.4)
    for name, pts in (points or {}).items():
        arr = np.maximum(np.asarray(pts, float).reshape(-1, 2), floor)
        ax.plot(arr[:, 0], arr[:, 1], "o-", ms=4, lw=1, label=name)
    grid = np.logspace(np.log10(floor), 0, 50)
    ax.plot(grid, grid, ls="--", color="grey", lw=1, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor, 1)
    ax.set_ylim(floor, 1.05)
    ax.set_xlabel("false positive rate (non-members called members)")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
