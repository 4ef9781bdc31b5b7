"""``xr0 synth``: write a federation of synthetic hospitals (DICOM images, masks, manifests).

Example::

    xr0 synth --out runs/fed --sites 3 --images-per-site 40 --seed 0
    xr0 synth --out runs/fed --sites 4 --images-per-site 200 --image-size 224 --json
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

from xr0_core.cli import CLIError, print_json

_SITE_DIR = re.compile(r"site\d+")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synth",
        help="write synthetic hospitals: DICOM phantoms with reports, labels, masks, landmarks, boxes",
        description=(
            "Write N non-IID synthetic hospitals under --out: <site>/images/*.dcm, <site>/masks/*.png, "
            "<site>/manifest.csv, plus federation.json. Same seed, same bytes."
        ),
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (new or empty, see --overwrite)")
    p.add_argument("--sites", type=int, default=3, help="number of hospitals (default 3)")
    p.add_argument("--images-per-site", type=int, default=40, help="average images per site (default 40)")
    p.add_argument("--seed", type=int, default=0, help="federation seed (default 0)")
    p.add_argument("--image-size", type=int, default=128, help="square image side in pixels (default 128)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace site folders and federation.json already in --out")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from xr0_core.data.synthetic.render import MIN_IMAGE_SIZE

    if args.sites < 1:
        raise CLIError(f"--sites must be at least 1 (got {args.sites})")
    if args.images_per_site < 1:
        raise CLIError(f"--images-per-site must be at least 1 (got {args.images_per_site})")
    if args.image_size < MIN_IMAGE_SIZE:
        raise CLIError(f"--image-size must be at least {MIN_IMAGE_SIZE} px (got {args.image_size})")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file; give a folder")
    _prepare(out, args.overwrite)

    from xr0_core.data.synthetic.sites import write_federation

    site_dirs = write_federation(out, args.sites, args.images_per_site, args.seed, args.image_size)
    summary = [_summarise(path) for path in site_dirs]
    for site in summary:
        mix = ", ".join(f"{a} {n}" for a, n in sorted(site["by_anatomy"].items()))
        enc = ", ".join(f"{k} {n}" for k, n in sorted(site["encodings"].items()))
        photo = ", ".join(f"{k} {n}" for k, n in sorted(site["photometric"].items()))
        print(f"{site['name']}: {site['images']} images ({mix})", file=sys.stderr)
        print(f"  encodings: {enc}; photometric: {photo}", file=sys.stderr)
    print(f"wrote {len(site_dirs)} sites under {out} (federation.json describes them)", file=sys.stderr)
    if args.json:
        print_json({
            "out": str(out),
            "sites": [{k: s[k] for k in ("name", "path", "images", "by_anatomy")} for s in summary],
        })
    return 0


def _prepare(out: Path, overwrite: bool) -> None:
    """Refuse to mix a new federation with old files, unless asked to replace them."""
    if not out.exists():
        return
    ours = [p for p in out.iterdir() if (p.is_dir() and _SITE_DIR.fullmatch(p.name)) or p.name == "federation.json"]
    others = [p for p in out.iterdir() if p not in ours]
    if not ours and not others:
        return
    if not overwrite:
        raise CLIError(f"--out {out} is not empty; choose a new folder or pass --overwrite")
    if others:
        names = ", ".join(sorted(p.name for p in others)[:5])
        raise CLIError(f"--out {out} holds files that are not a synthetic federation ({names}); choose another folder")
    for p in ours:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def _summarise(site_dir: Path) -> dict:
    import pydicom

    from xr0_core.data.manifest import load_manifest

    records = load_manifest(site_dir / "manifest.csv")
    encodings: Counter[str] = Counter()
    photometric: Counter[str] = Counter()
    for r in records:
        ds = pydicom.dcmread(r.path, stop_before_pixels=True)
        encodings[ds.file_meta.TransferSyntaxUID.keyword or str(ds.file_meta.TransferSyntaxUID)] += 1
        photometric[str(ds.PhotometricInterpretation)] += 1
    return {
        "name": site_dir.name,
        "path": str(site_dir),
        "images": len(records),
        "by_anatomy": dict(Counter(r.anatomy for r in records)),
        "encodings": dict(encodings),
        "photometric": dict(photometric),
    }
