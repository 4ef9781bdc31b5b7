"""The site privacy ledger: one accountant per hospital, on the hospital's disk, across rounds and runs (D3).

A ledger is a small JSON file, ``<state-dir>/privacy/ledger.json``, holding the site's budget and every
*release* it ever made: each time trained weights left the site, the mechanism that produced them
(noise multiplier, Poisson sample rate, number of steps) with the run id and round. As in Opacus's
accountants, the history is the state and epsilon is always *derived* from it; nothing else is trusted.

Writes are atomic (temp file, fsync, rename) and serialised across processes by an exclusive ``flock`` on
``ledger.lock``: a SuperNode restarted mid-round, or two Ray actors serving the same hospital, can never
lose or tear a release. A round's release is *reserved* (written as ``pending``, counted in full) in the same
locked transaction as the budget check, before any training, and committed after
(:mod:`xr0_core.privacy.reservation`): a crash at any point over-counts (safe) and never under-counts, and two
concurrent runs cannot both spend the same remaining budget.

The budget, delta and accountant belong to the site policy (:mod:`xr0_core.site.policy`); a ledger written
before policies existed may still hold them: :func:`xr0_core.site.state.site_policy` moves them into a
new policy file once.

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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterator

from xr0_core.atomic import atomic_write

LEDGER_FORMAT = "xr0-privacy-ledger/1"
ACCOUNTANTS = ("rdp", "prv", "gdp")
KIND_DPSGD = "dp-sgd"  # sample-level DP-SGD steps of one round (patient / image unit)
KIND_CLIENT = "client"  # client-level Gaussian release of a clipped update (protects the whole site's data)
CLIENT_SENSITIVITY = 2.0  # add/remove one patient moves a clipped update (norm <= C) by up to 2C
STATUS_PENDING = "pending"  # reserved before training; counts in full
STATUS_COMMITTED = "committed"
# Reserved, then nothing of the round ever left the site: its run stopped before the release, the trained
# weights were dropped and the round's local state was never saved (xr0_core/site/round.py). No output of
# the mechanism exists any more, so it does not count; it stays in the ledger as the record of what happened.
STATUS_WITHDRAWN = "withdrawn"


class PrivacyError(RuntimeError):
    """Base class of privacy errors; messages say what to change."""


class PrivacyBudgetExceeded(PrivacyError):
    """The next release would push the site's epsilon past its budget: the site refuses to train."""


class LedgerError(PrivacyError):
    """The ledger file is unreadable or belongs to another format; the message names the file."""


@dataclass(frozen=True)
class Release:
    """One mechanism whose output left (or may have left) the site.

    ``steps`` compositions of a Poisson-subsampled Gaussian mechanism with ``noise_multiplier`` sigma
    (noise std = sigma * clip norm) and sampling rate ``sample_rate``. ``sensitivity`` is the L2 sensitivity
    of what is released in units of the clip norm for the ledger's neighbouring relation (add/remove one
    unit): 1 for DP-SGD sums of clipped per-unit gradients, 2 for a clipped client update (the site sends an
    update whether or not the patient is in it, so two updates of norm <= C differ by up to 2C).
    ``unit`` is the privacy unit (``patient`` | ``image``) the release protects. ``status`` is ``pending``
    from the reservation before training until the round finished (a pending release counts in full: a
    crash over-counts, never under-counts) and ``committed`` after.
    """

    run_id: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    kind: str = KIND_DPSGD
    time: float = 0.0
    unit: str = ""
    status: str = STATUS_COMMITTED
    sensitivity: float = 0.0  # 0: the kind's (1 for dp-sgd, 2 for client); older ledgers have none
    note: str = ""  # why a release was withdrawn, or charged although its update was never used

    @property
    def counts(self) -> bool:
        """Whether this release counts toward epsilon (pending and committed ones do; withdrawn ones do not)."""
        return self.status != STATUS_WITHDRAWN

    @property
    def effective_sensitivity(self) -> float:
        if self.sensitivity > 0:
            return float(self.sensitivity)
        return CLIENT_SENSITIVITY if self.kind == KIND_CLIENT else 1.0

    def history_entry(self) -> tuple[float, float, int]:
        """``(sigma / sensitivity, q, steps)``: the Gaussian mechanism with sensitivity 1 the accountant sees."""
        return (float(self.noise_multiplier) / self.effective_sensitivity, float(self.sample_rate), int(self.steps))


@dataclass
class LedgerData:
    budget: float | None = None  # legacy (format 1 before site policies): the site policy owns the budget now
    delta: float | None = None  # legacy, idem
    accountant: str = "rdp"  # legacy, idem
    unit: str = ""  # legacy: one unit for the whole site (releases carry their own unit now)
    releases: list[Release] = field(default_factory=list)
    runs: dict[str, dict] = field(default_factory=dict)  # run id -> {"noise_multiplier": sigma chosen}

    def release_units(self) -> set[str]:
        """The privacy units of the releases so far (a legacy release takes the ledger's old ``unit``)."""
        return {r.unit or self.unit for r in self.releases if (r.unit or self.unit)}


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


def epsilon_prefixes(history: list[tuple[float, float, int]], delta: float, accountant: str = "rdp",
                     points: int = 60) -> list[tuple[int, float]]:
    """``[(i, epsilon of history[:i + 1])]``: epsilon after each release, for a curve of the spend over time.

    With ``rdp`` every prefix (RDP composes by addition: each distinct entry's RDP vector is computed once and
    summed in order, so the last value is :func:`epsilon_of` of the whole history, bit for bit); with another
    accountant at most ``points`` prefixes, evenly spaced, the last always included (each costs a full
    accounting).
    """
    n = len(history)
    if n == 0:
        return []
    if accountant != "rdp":
        k = min(points, n)
        idx = sorted({round(i * (n - 1) / (k - 1)) for i in range(k)} if k > 1 else {n - 1})
        return [(i, epsilon_of(history[:i + 1], delta, accountant)) for i in idx]
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as rdp_analysis

    alphas = RDPAccountant.DEFAULT_ALPHAS
    vectors: dict[tuple[float, float, int], object] = {}
    total: object = 0  # as RDPAccountant.get_privacy_spent: sum() of the vectors, in history order
    seen, infinite = False, False
    out = []
    for i, (sigma, q, steps) in enumerate(history):
        if steps > 0:
            if sigma <= 0:
                infinite = True
            else:
                key = (float(sigma), float(q), int(steps))
                if key not in vectors:
                    vectors[key] = rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=alphas)
                total = total + vectors[key]
                seen = True
        if infinite:
            out.append((i, math.inf))
        elif not seen:
            out.append((i, 0.0))
        else:
            eps, _ = rdp_analysis.get_privacy_spent(orders=alphas, rdp=total, delta=delta)
            out.append((i, float(eps)))
    return out


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
            unit=raw.get("unit", ""), releases=[_release(r, self.path) for r in raw.get("releases", [])],
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
        return [r.history_entry() for r in data.releases if r.counts and (kind is None or r.kind == kind)]

    def epsilon(self, data: LedgerData | None = None, delta: float | None = None, accountant: str | None = None,
                run_id: str | None = None) -> float:
        """Epsilon spent at ``delta`` with ``accountant`` (the site policy's; a legacy ledger's own values when
        not given) over every release that counts, pending ones included, withdrawn ones not (or over one run's,
        with ``run_id``)."""
        data = data or self.read()
        d = delta if delta is not None else data.delta
        if d is None:
            raise LedgerError(f"{self.path}: no delta given; the site policy (xr0 site policy) sets it")
        releases = [r for r in data.releases if r.counts and (run_id is None or r.run_id == run_id)]
        return epsilon_of([r.history_entry() for r in releases], d, accountant or data.accountant)

    # -- changes
    def withdraw(self, run_id: str, server_round: int, note: str) -> int:
        """Mark this round's *pending* releases withdrawn (they stop counting); returns how many.

        Only for a round whose mechanism output provably never left the site and was never saved: the caller
        (:func:`xr0_core.site.round.run_site_round`) does this when the run stopped before the release and
        before the round's local state was written. A committed release is never withdrawn."""
        with self.transaction() as data:
            n = 0
            for i, r in enumerate(data.releases):
                if r.run_id == run_id and r.round == server_round and r.status == STATUS_PENDING:
                    data.releases[i] = Release(**{**asdict(r), "status": STATUS_WITHDRAWN, "note": note})
                    n += 1
            return n

    def commit(self, run_id: str, server_round: int, note: str = "") -> int:
        """Mark this round's pending releases committed (they already count); returns how many."""
        with self.transaction() as data:
            n = 0
            for i, r in enumerate(data.releases):
                if r.run_id == run_id and r.round == server_round and r.status == STATUS_PENDING:
                    data.releases[i] = Release(**{**asdict(r), "status": STATUS_COMMITTED, "note": note or r.note})
                    n += 1
            return n


def _release(raw: dict, path: Path) -> Release:
    known = {f.name for f in fields(Release)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise LedgerError(f"{path}: a release has unknown fields {unknown}; was it written by a newer XR-0?")
    return Release(**raw)


def check_budget_values(budget: float, delta: float) -> None:
    if not (budget > 0 and math.isfinite(budget)):
        raise PrivacyError(f"privacy-budget must be a positive finite epsilon, got {budget!r}")
    if not 0 < delta < 1:
        raise PrivacyError(f"privacy-delta must be in (0, 1), got {delta!r} (use well below 1 / number of patients)")
