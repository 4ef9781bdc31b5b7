"""The per-step loss of a round as a few scalars that may leave a site (``loss-curve-00`` ..), and where on
the step axis each one sits. Torch-free: the coordinator's report and dashboard draw the curves from them.
"""

from __future__ import annotations

LOSS_CURVE_PREFIX = "loss-curve-"  # per-round summary of the per-step loss (scalars; see loss_curve_metrics)
LOSS_CURVE_POINTS = 8


def loss_curve_metrics(step_losses: list[float], points: int = LOSS_CURVE_POINTS) -> dict[str, float]:
    """The per-step loss of one round as at most ``points`` scalars: the mean over equal slices of the steps.

    Per-step values stay at the site; these few scalars let the coordinator draw a per-step curve per
    hospital (slice ``b`` of ``n`` steps covers local steps ``floor(b n / B) .. floor((b + 1) n / B) - 1``,
    ``B = min(points, n)``; :func:`loss_curve_steps` gives their centres).
    """
    n = len(step_losses)
    bins = min(points, n)
    out = {}
    for b in range(bins):
        lo, hi = b * n // bins, (b + 1) * n // bins
        out[f"{LOSS_CURVE_PREFIX}{b:02d}"] = float(sum(step_losses[lo:hi]) / (hi - lo))
    return out


def loss_curve_steps(num_steps: int, points: int = LOSS_CURVE_POINTS) -> list[float]:
    """Centre (local step, 0-based) of each slice :func:`loss_curve_metrics` averages, ``[min(points, n)]``."""
    bins = min(points, num_steps)
    return [((b * num_steps // bins) + ((b + 1) * num_steps // bins) - 1) / 2 for b in range(bins)]
