"""The audit catches a deliberately leaky model, and the same site under DP at epsilon = 1 shows no leak (issue 25).

One in-process hospital, the way a site runs it: PNG files and a manifest, a site policy with
``privacy.audit-canaries`` (every training-side patient is a canary: its secret coin decides whether it is
trained on), one local round (``run_site_round``, under DP with the budget in the policy), the round's shared
weights saved to a file, then ``xr0 audit --canaries`` on that file.

The leaky recipe memorises on purpose: 48 of 96 patients trained on for 600 steps with one batch holding every
member (600 epochs), light augmentation (global crops only, 80-100 % of the image), a cold teacher (0.02), no
iBOT, a 16-pixel backbone. What makes it leak measurably rather than collapse (DINO's targets going uniform, a
loss stuck at log K) are images that differ from the first step: smooth random fields, not white noise.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import tiny

pytestmark = pytest.mark.slow  # trains 600 + 100 steps and runs xr0 audit twice (~30 s on 2 cores)

PATIENTS = 96
STEPS = 600
# Under DP at epsilon = 1 the same 600 steps of 48 cannot fit the budget at any noise (calibrate_noise stops at
# sigma 50), and a site refuses noise above its policy's max-noise-multiplier (10): the DP site trains 100 steps
# of 8 patients (sample rate 8 / ~38 members, sigma ~8.7), about 20 epochs.
DP_STEPS, DP_BATCH = 100, 8
LEAKY = {
    "model.img-size": 16, "ssl.local-size": 8, "train.load-size": 16, "ssl.n-local-crops": 0,
    "ssl.global-scale-min": 0.8, "ssl.ibot-weight": 0.0, "ssl.koleo-weight": 0.0, "model.drop-path": 0.0,
    "ssl.teacher-temp": 0.02, "ssl.teacher-temp-warmup": 0.02, "train.health-every": 0, "seed": 0,
}
DP_EPSILON = 1.0
DELTA = 1e-5


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """White noise blurred by a Gaussian of ``sigma`` pixels, scaled to [0, 1]. Shape: ``shape``."""
    r = int(3 * sigma)
    t = np.arange(-r, r + 1)
    w = np.exp(-t ** 2 / (2 * sigma ** 2))
    w /= w.sum()
    x = rng.standard_normal((shape[0] + 2 * r, shape[1] + 2 * r))
    x = np.apply_along_axis(lambda v: np.convolve(v, w, mode="valid"), 1, x)
    x = np.apply_along_axis(lambda v: np.convolve(v, w, mode="valid"), 0, x)
    return (x - x.min()) / (x.max() - x.min())


def write_site(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` patients with one 8-bit PNG each (36 x 40 px, the smallest a site accepts is 32) and a manifest (path, patient_id, split = train)."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        name = f"img{i:03d}.png"
        Image.fromarray((smooth_field(rng, (36, 40), 6.0) * 255).round().astype(np.uint8)).save(root / name)
        rows.append({"path": name, "patient_id": f"p{i:03d}", "split": "train"})
    with (root / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def train_and_audit(tmp: Path, *, dp: bool) -> dict:
    """One local round at a fresh site (all training-side patients canaries), then ``xr0 audit --canaries``'s
    JSON summary of the round's shared weights."""
    from safetensors.torch import save_file

    from xr0_core.audit.canaries import ensure_canaries, without_left_out
    from cli import main as xr0
    from xr0_core.data.index import index_site
    from xr0_core.data.splits import private_partition
    from xr0_core.site.policy import SitePolicy, policy_path, save_policy, with_values
    from xr0_core.site.round import run_site_round, site_trainer
    from xr0_core.site.state import ensure_identity
    from xr0_core.ssl.factory import initial_shared_state
    from xr0_core.train.round_state import RoundSpec

    data, state = write_site(tmp / "data", PATIENTS), tmp / "state"
    over = {**LEAKY, "train.batch-size": DP_BATCH if dp else 48, **({"privacy.enabled": True} if dp else {})}
    cfg = tiny.tiny_cfg(**over)
    records = index_site(data, verify_pixels=False).records
    train = records
    values = {"privacy.delta": DELTA}
    if dp:  # what a DP site trains on (client/runtime.py): its private partition, keyed by its identity
        values.update({"privacy.budget": DP_EPSILON, "privacy.run-cap": "all", "release.epsilon": "exact"})
        train = private_partition(records, ensure_identity(state, "leaky").site_id)[0]
    m = len({r.patient_id for r in train})
    policy = save_policy(with_values(SitePolicy(), {**values, "privacy.audit-canaries": m}), policy_path(state))
    # the coins as client/runtime.py draws them at the first round (seeded here: the test must be repeatable)
    canaries = ensure_canaries(state, train, m, rng=np.random.default_rng(7))
    trainer = site_trainer(cfg, without_left_out(train, canaries), site="leaky")
    steps = DP_STEPS if dp else STEPS
    shared, metrics = run_site_round(trainer, initial_shared_state(cfg), RoundSpec(1, 0, steps, steps, "leak"),
                                     state, policy)
    assert dp or metrics["loss"] < metrics["loss-first"] - 1.0  # the leaky site fits its patients
    weights = tmp / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in shared.items()}, str(weights))
    out = tmp / "audit"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = xr0(["audit", "--state-dir", str(state), "--data", str(data), "--model", str(weights),
                  *tiny.tiny_set_args(**over), "--canaries", "--canary-guess-fraction", "0.5", "--json",
                  "--out", str(out)])
    assert rc == 0
    summary = json.loads(buf.getvalue())
    assert (out / "audit.json").is_file() and (out / "roc.png").is_file()
    return summary


@pytest.fixture(scope="module")
def leaky(tmp_path_factory):
    return train_and_audit(tmp_path_factory.mktemp("leaky"), dp=False)


@pytest.fixture(scope="module")
def private(tmp_path_factory):
    return train_and_audit(tmp_path_factory.mktemp("dp"), dp=True)


def test_a_leaky_model_is_caught(leaky):
    loss = leaky["scores"]["ssl-loss"]
    assert loss["auroc"] >= 0.8 and loss["auroc_ci95"][0] > 0.5, loss
    canaries = leaky["canaries"]
    assert canaries["canaries"] == PATIENTS and canaries["epsilon_lower"] > 1.0, canaries
    assert leaky["epsilon_ledger"] is None  # no DP: nothing bounds it


def test_the_same_site_under_dp_at_epsilon_1_shows_no_more_than_epsilon(private):
    assert private["epsilon_ledger"] == pytest.approx(DP_EPSILON, abs=0.01)  # the ledger spent the budget
    canaries = private["canaries"]
    assert canaries["epsilon_lower"] <= DP_EPSILON, canaries
    for name, s in private["scores"].items():
        lo, hi = s["auroc_ci95"]
        assert lo <= 0.5 <= hi, (name, s)  # chance within the interval
        assert s["epsilon_lower"] <= DP_EPSILON, (name, s)
