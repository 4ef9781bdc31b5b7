"""Canary patients of the one-run audit: which of the site's own training patients are canaries, and the secret
coin of each (True: trained on), kept in the state folder and never sent.

A site sets ``privacy.audit-canaries = M`` in its policy. At the first round that reads its data the site
draws M of its training patients (those it would train on anyway: ``split != test`` and, under DP, not held
out for evaluation) with a secret key, and one fair coin per canary, and writes ``<state-dir>/audit/
canaries.json`` (mode 0600). Every later round and run reads the same file: a canary whose coin is False is
left out of training for good, one whose coin is True is trained on like any patient. The canaries are held
out patients of the site's own data (no synthetic images are inserted), so a canary costs the site nothing but
the training data of the canaries left out (about M / 2 patients).

``xr0 audit --canaries`` reads the coins back and bounds epsilon from the canaries' scores
(:mod:`xr0_core.audit.one_run`). The file is the audit's secret: an attacker who knew the coins would not need
an audit, and an audit whose coins were redrawn after training is meaningless, so the file is never rewritten.

References: Steinke, Nasr & Jagielski (NeurIPS 2023), Section 4 (canaries included by independent coins).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xr0_core.atomic import atomic_write
from xr0_core.data.splits import unit_of

CANARY_FILE = Path("audit") / "canaries.json"
CANARY_FORMAT = "xr0-canaries/1"


class CanaryError(ValueError):
    """The canary file disagrees with the policy or the data; the message says what to do."""


@dataclass(frozen=True)
class CanarySet:
    """The site's canaries: ``units`` (patient ids, local pseudonyms) and their secret coins ``included``."""

    units: tuple[str, ...]
    included: tuple[bool, ...]
    created: float
    path: str = ""

    @property
    def left_out(self) -> frozenset[str]:
        """Canaries never trained on (coin False)."""
        return frozenset(u for u, c in zip(self.units, self.included) if not c)

    def coin(self) -> dict[str, bool]:
        return dict(zip(self.units, self.included))


def canary_path(state_dir: str | os.PathLike) -> Path:
    return Path(state_dir) / CANARY_FILE


def read_canaries(state_dir: str | os.PathLike) -> CanarySet | None:
    """The saved canary set, or None when the site never drew one."""
    path = canary_path(state_dir)
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        if raw.get("format") != CANARY_FORMAT:
            raise ValueError(f"format {raw.get('format')!r} is not {CANARY_FORMAT!r}")
        units = tuple(str(c["unit"]) for c in raw["canaries"])
        coins = tuple(bool(c["included"]) for c in raw["canaries"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CanaryError(f"{path} is unreadable ({exc}); restore it from a backup: the coins cannot be redrawn "
                          "after training") from None
    return CanarySet(units, coins, float(raw.get("created", 0)), str(path))


def draw_canaries(units: Sequence[str], m: int, *, rng: np.random.Generator | None = None) -> tuple[list[str], list[bool]]:
    """``m`` of ``units`` and a fair coin for each, from a secret generator (``rng`` only in tests)."""
    pool = sorted(set(units))
    if m > len(pool):
        raise CanaryError(f"privacy.audit-canaries = {m} but the site trains on {len(pool)} patients: choose at most "
                          f"{len(pool) // 2} (each left-out canary is a patient not trained on)")
    rng = rng or np.random.default_rng(secrets.randbits(128))
    chosen = [pool[i] for i in rng.permutation(len(pool))[:m]]
    coins = [bool(c) for c in rng.integers(0, 2, size=m)]
    return chosen, coins


def ensure_canaries(state_dir: str | os.PathLike, training_records: Sequence[Any], m: int, *,
                    rng: np.random.Generator | None = None) -> CanarySet | None:
    """The site's canary set for ``privacy.audit-canaries = m``: read it, or draw it from the training patients
    of ``training_records`` at first use. None when ``m == 0`` and none was drawn.

    Raises
    ------
    CanaryError
        The saved set has another size than the policy asks for (coins used in training cannot be redrawn).
    """
    saved = read_canaries(state_dir)
    if saved is not None:
        if m and len(saved.units) != m:
            raise CanaryError(f"{saved.path} holds {len(saved.units)} canaries but the policy asks for "
                              f"privacy.audit-canaries = {m}: the coins already shaped training and cannot be "
                              f"redrawn; set privacy.audit-canaries = {len(saved.units)} again (or 0 to train on every "
                              "patient from now on, which ends the canary audit of later rounds)")
        return saved if m else None
    if m <= 0:
        return None
    units, coins = draw_canaries([unit_of(r) for r in training_records], m, rng=rng)
    path = canary_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    created = time.time()
    body = {"format": CANARY_FORMAT, "created": created,
            "note": "secret coins of the one-run privacy audit: never send, never edit, never delete",
            "canaries": [{"unit": u, "included": c} for u, c in zip(units, coins)]}

    def write(tmp: Path) -> None:
        tmp.write_text(json.dumps(body, indent=1) + "\n")
        tmp.chmod(0o600)

    atomic_write(path, write)
    return CanarySet(tuple(units), tuple(coins), created, str(path))


def without_left_out(records: Sequence[Any], canaries: CanarySet | None) -> list[Any]:
    """``records`` minus every image of a canary whose coin is False."""
    if canaries is None:
        return list(records)
    out = canaries.left_out
    return [r for r in records if unit_of(r) not in out]
