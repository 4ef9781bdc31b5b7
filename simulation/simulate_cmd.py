"""``xr0 simulate``: a whole federation of hospitals on this machine (the project's main job).

Output folder (``--out``, default ``./xr0-sim``)::

    hospitals/<site>/      synthetic hospitals (unless --data is given)
    sites/<site>/          each hospital's state folder (local SSL state; privacy ledger)
    checkpoints/ metrics.json tensorboard/ backbone.safetensors run.json report.html   (coordinator)
    flower-app/            generated app folder carrying the run config to the SuperNodes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from xr0_core.cli import CLIError, parse_sets, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="run a federation of simulated hospitals on Flower's Simulation Engine",
        description="Simulate N hospitals pretraining one XR-0 backbone together (Flower + Ray, CPU or GPU).",
    )
    p.add_argument("--sites", type=int, default=3, help="number of hospitals (default 3)")
    p.add_argument("--rounds", type=int, default=None, help="federated rounds (default: config, 3)")
    p.add_argument("--preset", default="cpu-tiny", help="cpu-tiny | vit-s | vit-b")
    p.add_argument("--data", type=Path, default=None, help="folder with one sub-folder per hospital (default: synthetic)")
    p.add_argument("--out", type=Path, default=Path("xr0-sim"), help="output folder (default ./xr0-sim)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last complete round")
    p.add_argument("--images-per-site", type=int, default=48, help="synthetic images per hospital (default 48)")
    p.add_argument("--image-size", type=int, default=128, help="synthetic image side in pixels (default 128)")
    p.add_argument("--eager-sites", action="store_true",
                   help="write every synthetic hospital before the run (default: each one when its ClientApp first "
                   "uses it, so a large federation sampling a fraction per round writes only those; "
                   "--compare-pooled writes all)")
    p.add_argument("--local-steps", type=int, default=None, help="local SSL steps per round (default: preset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpus-per-client", type=int, default=1, help="CPU cores per simulated hospital (default 1)")
    p.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                   help="attach to a running Ray cluster (started with `ray start --head`, other machines joined "
                   "with `ray start --address HOST:PORT`) instead of a local one; it is left running")
    p.add_argument("--gpus-per-client", type=float, default=0.0,
                   help="GPU share per simulated hospital (e.g. 0.5: two per GPU; default 0, CPU only)")
    p.add_argument("--compare-pooled", action="store_true",
                   help="also pretrain on the pooled data with the same total steps and compare on held-out images")
    p.add_argument("--secagg", action="store_true",
                   help="secure aggregation: the coordinator sees only the sum of updates (sets secagg.enabled)")
    p.add_argument("--dp", action="store_true",
                   help="differential privacy at every hospital: DP-SGD per patient (sets privacy.enabled)")
    p.add_argument("--epsilon", type=float, default=8.0,
                   help="with --dp: each simulated hospital's own budget, written to its ledger (default 8)")
    p.add_argument("--delta", type=float, default=1e-5, help="with --dp: each hospital's delta (default 1e-5)")
    p.add_argument("--multimodal", action="store_true",
                   help="mXR-0: hospitals with reports also train a text tower (sets multimodal.enabled); "
                        "hospitals without reports train image-only in the same federation")
    p.add_argument("--init-from", type=Path, default=None, metavar="FILE",
                   help="start from a local backbone (timm / DINOv2 / RAD-DINO / XR-0 export); its SHA-256 goes "
                   "into the run config and every hospital checks it (sets model.init-from, model.init-sha256)")
    p.add_argument("--prepare-workers", type=int, default=None,
                   help="processes decoding hospitals' images into prepared shards before the run "
                   "(default: all cores; see train.image-cache)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any run-config key, e.g. --set train.batch-size=8 (repeatable)")
    p.add_argument("--dashboard", action="store_true",
                   help="serve the live dashboard of this run on 127.0.0.1 while it runs (xr0 dashboard --run-dir OUT)")
    p.add_argument("--dashboard-port", type=int, default=None, metavar="PORT",
                   help="with --dashboard: its port (default 8765; 0: any free port)")
    p.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    p.add_argument("--verbose", action="store_true",
                   help="show Flower, Ray and library output on the terminal (default: OUT/logs/simulate.log)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from xr0_core.console import quiet_console

    t0 = time.monotonic()
    out: Path = args.out.expanduser().resolve()
    # The project's lines and one progress bar on the terminal; Flower, Ray and warnings in OUT/logs/.
    # --json promises one JSON object on stdout: everything printed while running goes to stderr.
    with quiet_console(out / "logs", "simulate", verbose=args.verbose) as con, \
            contextlib.redirect_stdout(sys.stderr), _dashboard(args, out, con):
        summary = _simulate(args, con)
        con.end_progress()
        if summary.get("status") != "stopped":
            con.line(f"done: {summary['rounds_completed']} rounds in {time.monotonic() - t0:.0f} s; "
                     f"report {summary['report']}" + ("" if args.verbose else f"; logs {con.log_path.parent}"))
    if args.json:
        print_json(summary)
    if summary.get("status") == "stopped":
        print(f"xr0: error: {summary['stop_reason']}; no model exported; report {summary['report']}", file=sys.stderr)
        return 1
    return 0


@contextlib.contextmanager
def _dashboard(args: argparse.Namespace, out: Path, con):
    """With ``--dashboard``: ``xr0 dashboard --run-dir OUT`` as a child process for the command's lifetime (its
    own process, so serving the page never takes the coordinator's interpreter; bench/dashboard.py measures it)."""
    if not getattr(args, "dashboard", False):
        yield None
        return
    from xr0_core.dashboard.app import DashboardError
    from xr0_core.dashboard.serve import DEFAULT_PORT, DashboardProcess

    port = DEFAULT_PORT if args.dashboard_port is None else args.dashboard_port
    child = DashboardProcess(out, port, out / "logs" / "dashboard.log")
    try:
        url = child.start()
    except DashboardError as exc:
        raise CLIError(str(exc)) from None
    con.line(f"dashboard: {url} (it stops with this command; `xr0 dashboard --run-dir {out}` shows the run later)")
    try:
        yield child
    finally:
        child.stop()


def _simulate(args: argparse.Namespace, con) -> dict[str, Any]:
    from xr0_core.config import ConfigError, from_flat

    from .sites import SimulationDataError, check_given, describe_sites, ensure_synthetic

    if args.sites < 1:
        raise CLIError("--sites must be >= 1")
    out: Path = args.out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    flat: dict[str, Any] = {"preset": args.preset, "seed": args.seed}
    flat.update(parse_sets(args.set))
    if args.secagg:
        flat["secagg.enabled"] = True
    if args.dp:
        flat["privacy.enabled"] = True
    if getattr(args, "multimodal", False):
        flat["multimodal.enabled"] = True
    if args.rounds is not None:
        flat["federation.rounds"] = args.rounds
    if args.local_steps is not None:
        flat["train.local-steps"] = args.local_steps
    if args.init_from is not None:
        from xr0_core.models.init_from import file_sha256

        init = args.init_from.expanduser().resolve()
        if not init.is_file():
            raise CLIError(f"--init-from {init} is not a file")
        flat.update({"model.init-from": str(init), "model.init-sha256": file_sha256(init)})
    data_root = args.data.expanduser().resolve() if args.data else out / "hospitals"
    flat.update({
        "federation.out-dir": str(out),
        "federation.resume": bool(args.resume),
        "simulation.data-root": str(data_root),
        "simulation.state-root": str(out / "sites"),
    })
    try:
        cfg = from_flat(flat)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    if not args.data:
        check_min_available(cfg, args.sites)
    try:
        if args.data:
            dirs = check_given(data_root)
        else:
            lazy = not (getattr(args, "eager_sites", False) or args.compare_pooled)  # pooled reads every hospital
            dirs = ensure_synthetic(data_root, args.sites, args.images_per_site, args.seed, args.image_size,
                                    lazy=lazy)
    except SimulationDataError as exc:
        raise CLIError(str(exc)) from None
    if args.data and args.sites != len(dirs):
        con.line(f"--data holds {len(dirs)} hospitals: simulating all of them")
    check_min_available(cfg, len(dirs))
    sites = describe_sites(dirs, out / "sites")
    con.line(f"simulate: {len(dirs)} hospitals ({'given' if args.data else 'synthetic'}, "
             f"{sum(s.get('images', 0) or 0 for s in sites)} images), preset {cfg.preset}, "
             f"{cfg.federation.rounds} rounds x {cfg.train.local_steps} local steps"
             + (", DP" if cfg.privacy.enabled or cfg.privacy.client_level else "")
             + (", secure aggregation" if cfg.secagg.enabled else ""))
    _prepare_images(cfg, sites, args.prepare_workers, con)
    if cfg.privacy.enabled or cfg.privacy.client_level:
        _prepare_privacy(cfg, args, out / "sites", [d.name for d in dirs])

    from server.checkpoint import CheckpointError, resume_point

    from .engine import run_federation

    try:
        resume_point(out / "checkpoints", cfg)  # refuse before starting Ray; the ServerApp checks again
        if args.gpus_per_client < 0:
            raise CLIError(f"--gpus-per-client must be >= 0, got {args.gpus_per_client}")
        run_federation(cfg, len(dirs), app_dir=out / "flower-app", cpus_per_client=args.cpus_per_client,
                       ray_address=args.ray_address, gpus_per_client=args.gpus_per_client)
    except CheckpointError as exc:
        raise CLIError(str(exc)) from None
    run_json = out / "run.json"
    if not run_json.exists():
        where = "the output above" if args.verbose else str(con.log_path)
        raise CLIError(f"the federation ended without writing {run_json}; see {where}")
    summary = json.loads(run_json.read_text())
    summary["sites"] = sites
    from xr0_core.train.health_verdict import assess_history

    history = json.loads((out / "metrics.json").read_text())["rounds"] if (out / "metrics.json").exists() else []
    health = assess_history(history)
    summary["health"] = {"status": health["status"],
                         "sites": {n: {"status": v["status"], "reasons": v["reasons"], **v["last"]}
                                   for n, v in health["sites"].items()}}
    con.line(f"SSL health: {health['status'].upper()}"
             + "".join(f"; {n} {v['status']}: {'; '.join(v['reasons'])}" for n, v in health["sites"].items()
                       if v["status"] != "ok"))
    summary["data_source"] = "given" if args.data else "synthetic"
    if cfg.privacy.enabled or cfg.privacy.client_level:  # epsilon per hospital from its own ledger
        from xr0_core.privacy.ledger import PrivacyLedger
        from xr0_core.site.state import site_policy

        for site in summary["sites"]:
            state = out / "sites" / site["name"]
            ledger, policy = PrivacyLedger(state), site_policy(state).privacy
            site["epsilon"] = (ledger.epsilon(delta=policy.delta, accountant=policy.accountant)
                               if ledger.exists() else 0.0)
            site["delta"] = policy.delta
    if cfg.multimodal.enabled and "multimodal" in summary:  # bytes each hospital uploads per round, per mode
        from xr0_core.ssl.multimodal import SharingReport

        mm = summary["multimodal"]
        lines = SharingReport(mm["text_sharing"], mm["text_top_k"], mm["image_bytes"], mm["text_bytes"]).lines()
        for line in lines:
            con.line(line)
    if args.compare_pooled and summary.get("status") != "stopped":
        from .compare import compare_backbones

        summary["comparison"] = compare_backbones(cfg, dirs, out, n_sites=len(dirs))
    from xr0_core.report import rewrite_outputs

    rewrite_outputs(out, summary)
    return summary


def check_min_available(cfg, n_sites: int) -> None:
    """Refuse a ``federation.min-available`` above the simulated hospitals: Flower would wait for them forever."""
    want = cfg.federation.min_available
    if want > n_sites:
        raise CLIError(f"federation.min-available {want} > the {n_sites} simulated hospitals: every round would wait "
                       f"forever for hospitals that never connect; use --sites {want} or lower it")


def _prepare_images(cfg, sites: list[dict[str, Any]], workers: int | None, con) -> None:
    """Decode large hospitals into prepared shards here, in parallel over the cores, before Ray starts: the
    simulated clients then read them memory-mapped (train.image-cache; D16). Small ones stay in RAM (auto)."""
    import os

    from xr0_core.data.prepared import prepare_site, prepared_dir
    from xr0_core.data.source import PREPARED_DTYPE, cache_kind

    for site in sites:
        state = Path(site["state_dir"])
        if cache_kind(cfg, int(site["images"]), state) != "prepared":
            continue
        from xr0_core.data.synthetic.lazy import materialize

        materialize(Path(site["data_dir"]))  # a planned synthetic hospital: its images first
        folder = prepared_dir(state, cfg.train.load_size, PREPARED_DTYPE)
        report = prepare_site(site["data_dir"], folder, cfg.train.load_size, dtype=PREPARED_DTYPE,
                              workers=workers or os.cpu_count() or 1, verify=True)
        con.line(f"{site['name']}: {report.images} images prepared in {folder} ({report.decoded} decoded now, "
                 f"{report.images_per_second:.0f} images/s)")


def _prepare_privacy(cfg, args: argparse.Namespace, state_root: Path, names: list[str]) -> None:
    """Fail fast on a batch-coupled objective; write every simulated hospital's site policy (the researcher
    plays the hospitals here; in deployment each hospital writes its own with `xr0 site policy`).

    A simulated hospital's policy: the budget ``--epsilon`` at ``--delta`` (a hospital that already spent part
    of an earlier budget keeps its ledger) that this run may spend whole (``privacy.run-cap = "all"``), and evaluation of held-out patients allowed after the budget is
    spent, since the researcher wants the final evaluation of a run that spends its whole budget."""
    from xr0_core.privacy.dp import BatchCoupledLossError, dp_objective_config
    from xr0_core.privacy.ledger import PrivacyError
    from xr0_core.site.policy import PolicyError, policy_path, save_policy, with_values
    from xr0_core.site.state import site_policy

    try:
        dp_objective_config(cfg)
        for name in names:
            state = state_root / name
            policy = site_policy(state)
            if policy.privacy.budget is not None and policy.path:
                if policy.privacy.budget != args.epsilon:
                    print(f"[xr0] {name} keeps the budget of its own site policy (epsilon {policy.privacy.budget:g}); "
                          "--epsilon applies to hospitals without one", file=sys.stderr, flush=True)
                continue
            # run-cap "all": the researcher's one run is meant to spend --epsilon (a hospital's own policy sizes a
            # cap for the runs its budget must last for: docs/privacy.md).
            policy = with_values(policy, {"privacy.budget": args.epsilon, "privacy.delta": args.delta,
                                          "privacy.run-cap": policy.privacy.run_cap or "all",
                                          "evaluation.after-budget-spent": True})
            save_policy(policy, policy_path(state))
    except (BatchCoupledLossError, PrivacyError, PolicyError) as exc:
        raise CLIError(str(exc)) from None
