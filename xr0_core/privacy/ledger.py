"""The site privacy ledger: one accountant per hospital, on the hospital's disk, across rounds and runs (D3).

A ledger is a small JSON file, ``<state-dir>/privacy/ledger.json``, holding the site's budget and every
*release* it ever made: each time trained weights left the site, the mechanism that produced them
(noise multiplier, Poisson sample rate, number of steps) with the run id and round. As in Opacus's
accountants, the history is the state and epsilon is always *derived* from it; nothing else is trusted.

Writes are atomic (temp file, fsync, rename) and serialised across processes by an exclusive ``flock`` on
``ledger.lock``: a SuperNode restarted mid-round, or two Ray actors serving the same hospital, can never
lose or tear a release. A release is recorded *before* the weights are returned to the Flower client, so
a crash between the two over-counts (safe) and never under-counts.

References: Opacus ``accountants/`` (history of (noise_multiplier, sample_rate, steps)); Mironov,
"Renyi Differential Privacy" (2017); Mironov, Talwar, Zhang, "Renyi DP of the Sampled Gaussian Mechanism"
(2019).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from xr0_core.atomic import atomic_write

LEDGER_FORMAT = "xr0-privacy-ledger/1"
ACCOUNTANTS = ("rdp", "prv", "gdp")
KIND_DPSGD = "dp-sgd"  # sample-level DP-SGD steps of one round (patient / image unit)
KIND_CLIENT = "client"  # client-level Gaussian release of a clipped update (protects the whole site's data)


class PrivacyError(RuntimeError):
    """Base class of privacy errors; messages say what to change."""


class PrivacyBudgetExceeded(PrivacyError):
    """The next release would push the site's epsilon past its budget: the site refuses to train."""


class LedgerError(PrivacyError):
    """The ledger file is unreadable or belongs to another format; the message names the file."""


@dataclass(frozen=True)
class Release:
    """One mechanism whose output left the site.

    ``steps`` compositions of a Poisson-subsampled Gaussian mechanism with ``noise_multiplier`` sigma
    (noise std = sigma * clip norm) and sampling rate ``sample_rate``.
    """

    run_id: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    kind: str = KIND_DPSGD
    time: float = 0.0

    def history_entry(self) -> tuple[float, float, int]:
        return (float(self.noise_multiplier), float(self.sample_rate), int(self.steps))


@dataclass
class LedgerData:
    budget: float | None = None  # epsilon the site allows in total (None: not set yet)
    delta: float | None = None
    accountant: str = "rdp"
    unit: str = ""
    releases: list[Release] = field(default_factory=list)
    runs: dict[str, dict] = field(default_factory=dict)  # run id -> {"noise_multiplier": sigma chosen}


# ---------------------------------------------------------------------------------------------- accounting
def make_accountant(kind: str, history: list[tuple[float, float, int]]):
    """An Opacus accountant (``rdp`` | ``prv`` | ``gdp``) whose history is ``history``."""
    from opacus.accountants import GaussianAccountant, PRVAccountant, RDPAccountant

    classes = {"rdp": RDPAccountant, "prv": PRVAccountant, "gdp": GaussianAccountant}
    if kind not in classes:
        raise LedgerError(f"unknown accountant {kind!r}; use one of {', '.join(ACCOUNTANTS)}")
    acc = classes[kind]()
    acc.history = [tuple(h) for h in history]
    return acc


def epsilon_of(history: list[tuple[float, float, int]], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` of the composition of ``history`` entries (0 for an empty history).

    A zero noise multiplier gives infinity (no privacy)."""
    history = [h for h in history if h[2] > 0]
    if not history:
        return 0.0
    if any(h[0] <= 0 for h in history):
        return math.inf
    return float(make_accountant(accountant, history).get_epsilon(delta=delta))


def calibrate_noise(history: list[tuple[float, float, int]], *, sample_rate: float, steps: int, budget: float,
                    delta: float, accountant: str = "rdp", sigma_max: float = 50.0) -> float:
    """Smallest noise multiplier sigma (to 1e-3 relative) with which ``steps`` more steps at ``sample_rate``
    keep epsilon(history + new) <= ``budget``.

    Raises
    ------
    PrivacyBudgetExceeded
        Even ``sigma_max`` would exceed the budget (the budget is spent).
    """
    def eps(sigma: float) -> float:
        return epsilon_of(history + [(sigma, sample_rate, steps)], delta, accountant)

    if eps(sigma_max) > budget:
        raise PrivacyBudgetExceeded(
            f"privacy budget spent: epsilon already {epsilon_of(history, delta, accountant):.3f} of {budget:g} "
            f"at delta={delta:g}; no noise multiplier up to {sigma_max:g} leaves room for {steps} more steps")
    lo, hi = 0.05, sigma_max
    if eps(lo) <= budget:
        return lo
    while hi / lo > 1.001:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if eps(mid) <= budget else (mid, hi)
    return hi


# ---------------------------------------------------------------------------------------------- the file
class PrivacyLedger:
    """The privacy ledger of one site.

    Parameters
    ----------
    state_dir : path
        The site's state folder; the ledger lives in ``<state_dir>/privacy/``.

    Use :meth:`transaction` for read-modify-write (it holds the file lock); :meth:`read` for a snapshot.
    """

    def __init__(self, state_dir: str | Path) -> None:
        self.folder = Path(state_dir).expanduser() / "privacy"
        self.path = self.folder / "ledger.json"
        self.lock_path = self.folder / "ledger.lock"

    def exists(self) -> bool:
        return self.path.is_file()

    # -- io
    def read(self) -> LedgerData:
        if not self.path.is_file():
            return LedgerData()
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise LedgerError(f"privacy ledger {self.path} is unreadable ({exc}); restore it from a backup -- "
                              "never delete it, or the site loses track of the privacy it has spent") from None
        if raw.get("format") != LEDGER_FORMAT:
            raise LedgerError(f"{self.path} is not an XR-0 privacy ledger (format {raw.get('format')!r})")
        return LedgerData(
            budget=raw.get("budget"), delta=raw.get("delta"), accountant=raw.get("accountant", "rdp"),
            unit=raw.get("unit", ""), releases=[Release(**r) for r in raw.get("releases", [])],
            runs=dict(raw.get("runs", {})),
        )

    def _write(self, data: LedgerData) -> None:
        body = {"format": LEDGER_FORMAT, "budget": data.budget, "delta": data.delta,
                "accountant": data.accountant, "unit": data.unit,
                "releases": [asdict(r) for r in data.releases], "runs": data.runs}
        atomic_write(self.path, lambda p: p.write_text(json.dumps(body, indent=1, sort_keys=True)))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[LedgerData]:
        """Exclusive lock, read, yield the data for changes, write it back atomically (unless an exception)."""
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = self.read()
            yield data
            self._write(data)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # -- queries
    @staticmethod
    def history(data: LedgerData, kind: str | None = None) -> list[tuple[float, float, int]]:
        return [r.history_entry() for r in data.releases if kind is None or r.kind == kind]

    def epsilon(self, data: LedgerData | None = None, delta: float | None = None) -> float:
        """Epsilon spent at ``delta`` (default: the ledger's delta) over every release."""
        data = data or self.read()
        d = delta if delta is not None else data.delta
        if d is None:
            raise LedgerError(f"{self.path} has no delta: set privacy-delta in the node config")
        return epsilon_of(self.history(data), d, data.accountant)

    # -- changes
    def set_budget(self, budget: float, delta: float, accountant: str | None = None) -> None:
        """Record the site's own budget (epsilon, delta); refuses a delta change once releases exist."""
        check_budget_values(budget, delta)
        with self.transaction() as data:
            if data.releases and data.delta is not None and not math.isclose(data.delta, delta):
                raise LedgerError(f"{self.path}: delta is {data.delta:g} for the {len(data.releases)} releases "
                                  f"already made; it cannot change to {delta:g}")
            data.budget, data.delta = float(budget), float(delta)
            if accountant:
                data.accountant = accountant

    def record(self, release: Release) -> float:
        """Append ``release`` and return the new epsilon at the ledger's delta."""
        with self.transaction() as data:
            data.releases.append(release if release.time else Release(**{**asdict(release), "time": time.time()}))
            return self.epsilon(data)


def check_budget_values(budget: float, delta: float) -> None:
    if not (budget > 0 and math.isfinite(budget)):
        raise PrivacyError(f"privacy-budget must be a positive finite epsilon, got {budget!r}")
    if not 0 < delta < 1:
        raise PrivacyError(f"privacy-delta must be in (0, 1), got {delta!r} (use well below 1 / number of patients)")
