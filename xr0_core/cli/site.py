"""``xr0 site ...``: commands a hospital runs on its own data, before joining a federation.

``xr0 site check --data DIR [--manifest FILE] [--json]`` decodes every image the way training will
and reports what is usable (per anatomy, view and split, sizes, labels and annotations) and every
skipped file with its reason. Exit 0 when at least one image is usable.

``xr0 site prepare --data DIR --state-dir S [--preset P] [--workers N]`` decodes every usable image once,
in parallel, into memory-mapped shards that training and evaluation read (D16; xr0_core/data/prepared.py).
Rerun it after adding or changing files: only those are decoded; corrupt shards are found and rebuilt.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from xr0_core.cli import CLIError, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    site = subparsers.add_parser("site", help="inspect a hospital's data (run at the site)")
    site.set_defaults(func=lambda args: _help(site))
    site_sub = site.add_subparsers(dest="site_command", metavar="SUBCOMMAND")

    check = site_sub.add_parser(
        "check",
        help="list usable images and skipped files with reasons",
        description="Decode every image as training will and report what is usable and what is skipped.",
    )
    check.add_argument("--data", required=True, type=Path, help="the site's data folder")
    check.add_argument(
        "--manifest",
        type=Path,
        default=None,
        help="manifest CSV; its relative paths resolve against DATA "
        "(default: DATA/manifest.csv if present, else walk the folder)",
    )
    check.add_argument("--json", action="store_true", help="print only the JSON summary on stdout")
    check.add_argument(
        "--headers-only",
        action="store_true",
        help="read headers only (fast; a corrupt compressed stream is only found by decoding)",
    )
    check.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="processes decoding in parallel (default: CPU cores, at most 8)",
    )
    check.set_defaults(func=_check)

    prep = site_sub.add_parser(
        "prepare",
        help="decode every image once into memory-mapped shards (incremental, parallel)",
        description="Decode every usable image once, in parallel, into memory-mapped integer shards at the "
        "preset's load size, so training and evaluation need neither decoding nor RAM per image. Rerun after "
        "adding or changing files: only those are decoded; every shard is verified and a corrupt one rebuilt.",
    )
    prep.add_argument("--data", required=True, type=Path, help="the site's data folder")
    prep.add_argument("--manifest", type=Path, default=None,
                      help="manifest CSV (default: DATA/manifest.csv if present, else every image under DATA)")
    prep.add_argument("--state-dir", type=Path, default=None,
                      help="the site's state folder, as in the SuperNode's node config (state-dir); "
                      "shards go to STATE/prepared/")
    prep.add_argument("--out", type=Path, default=None, help="write the shards here instead of STATE/prepared/...")
    prep.add_argument("--preset", default="cpu-tiny", help="cpu-tiny | vit-s | vit-b (sets the load size)")
    prep.add_argument("--load-size", type=int, default=None, help="override the preset's train.load-size")
    prep.add_argument("--dtype", default="uint16", choices=["uint16", "uint8"], help="stored pixel type")
    prep.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                      help="decoding processes (default: all CPU cores)")
    prep.add_argument("--no-verify", action="store_true", help="skip checking existing shards' checksums")
    prep.add_argument("--json", action="store_true", help="print only the JSON summary on stdout")
    prep.set_defaults(func=_prepare)

    from xr0_core.cli.site_policy import register as register_policy

    register_policy(site_sub)

    from xr0_core.cli.site_deploy import register as register_deploy

    register_deploy(site_sub)

    from xr0_core.cli.dashboard import register_site as register_dashboard

    register_dashboard(site_sub)


def site_commands(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The ``xr0 site`` sub-command table (after :func:`register`), for the site commands a higher layer adds
    (``client/site_cmd.py``: the ones that need Flower)."""
    site = subparsers.choices["site"]
    return next(a for a in site._actions if isinstance(a, argparse._SubParsersAction))


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _check(args: argparse.Namespace) -> int:
    from xr0_core.data.index import SiteDataError, index_site
    from xr0_core.data.manifest import ManifestError

    if args.workers < 1:
        raise CLIError(f"--workers must be >= 1, got {args.workers}")
    try:
        index = index_site(
            args.data,
            args.manifest,
            verify_pixels=not args.headers_only,
            progress=sys.stderr.isatty(),
            workers=args.workers,
        )
    except (SiteDataError, ManifestError) as exc:
        raise CLIError(str(exc)) from None
    summary = index.summary()
    if args.json:
        print_json(summary)
    else:
        _print_report(summary)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from xr0_core.config import ConfigError, from_flat
    from xr0_core.data.index import SiteDataError
    from xr0_core.data.manifest import ManifestError
    from xr0_core.data.prepared import PreparedCacheError, prepare_site, prepared_dir

    if args.workers < 1:
        raise CLIError(f"--workers must be >= 1, got {args.workers}")
    data = args.data.expanduser().resolve()
    if not data.is_dir():
        raise CLIError(f"--data must be an existing folder, got {data}")
    try:
        load_size = args.load_size or from_flat({"preset": args.preset}).train.load_size
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    if args.state_dir is None and args.out is None:
        raise CLIError("pass --state-dir: the site's state folder (the SuperNode's node config state-dir), where "
                       "training looks for STATE/prepared/; or --out for a folder of your choice")
    out = args.out.expanduser().resolve() if args.out else \
        prepared_dir(args.state_dir.expanduser().resolve(), load_size, args.dtype)
    try:
        report = prepare_site(data, out, load_size, dtype=args.dtype, workers=args.workers, manifest=args.manifest,
                              verify=not args.no_verify, progress=sys.stderr.isatty() and not args.json)
    except (SiteDataError, ManifestError, PreparedCacheError) as exc:
        raise CLIError(str(exc)) from None
    summary = report.as_dict()
    if args.json:
        print_json(summary)
    else:
        print(f"[xr0] prepared {summary['images']} images in {out} ({summary['unusable']} unusable); this run: "
              f"{report.added} new, {report.changed} changed, {report.removed} removed, "
              f"{len(report.corrupt_shards)} corrupt shards rebuilt, {report.images_per_second:.1f} images/s",
              file=sys.stderr)
    return 0


def _print_report(summary: dict[str, Any]) -> None:
    """A human report on stderr (stdout stays free for ``--json``)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True, highlight=False)
    console.print(f"[bold]site data[/bold] {summary['root']}")
    console.print(f"usable images: [bold green]{summary['usable']}[/bold green]   skipped: {len(summary['skipped'])}")
    if summary["height"]:
        (h0, h1), (w0, w1) = summary["height"], summary["width"]
        console.print(f"size: height {h0}-{h1} px, width {w0}-{w1} px")
    if summary["patients"] is not None:
        console.print(f"patients: {summary['patients']}")

    counts = Table(title="usable images by", show_lines=False)
    counts.add_column("field")
    counts.add_column("value")
    counts.add_column("images", justify="right")
    for field in ("anatomy", "view", "split"):
        for value, n in summary[f"by_{field}"].items():
            counts.add_row(field, value, str(n))
    console.print(counts)

    has = summary["has"]
    console.print("annotations: " + ", ".join(f"{k} {v}" for k, v in has.items()))
    console.print("label columns: " + (", ".join(summary["labels"]) or "none"))

    if summary["skipped"]:
        table = Table(title="skipped files")
        table.add_column("file", overflow="fold")
        table.add_column("reason", overflow="fold")
        for item in summary["skipped"]:
            table.add_row(item["path"], item["reason"])
        console.print(table)
