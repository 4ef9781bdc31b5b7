"""Synthetic hospitals written when first used, not all up front (issue 27: 1,000 simulated hospitals).

:func:`plan_federation` writes what :func:`~xr0_core.data.synthetic.sites.write_federation` writes, less the
images: ``federation.json`` (the specs), one *empty* folder per hospital (so that
:func:`xr0_core.data.index.hospital_dirs` maps partitions to names exactly as for a written federation) and
:data:`PLAN_NAME`, the parameters that make every site. :func:`materialize` then writes one hospital's
images, masks and manifest the first time its ClientApp resolves it (``client/site.py``), byte for byte what
``write_federation`` would have written (same specs, same seeds). A federation of 1,000 hospitals of which a
round samples 50 writes 50 hospitals per round, not 1,000 before the first one.

Several Ray actors (or several machines of a Ray cluster on a shared folder) may ask for the same hospital:
an exclusive ``flock`` per hospital serialises them, and the site is written into a scratch folder and moved
in, its ``manifest.csv`` last, so a hospital either has its whole manifest or none.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any

PLAN_NAME = ".xr0-lazy-sites.json"  # beside the hospital folders: the generator's parameters
MANIFEST = "manifest.csv"


def plan_federation(root: Path, n_sites: int, images_per_site: int, seed: int, image_size: int) -> list[Path]:
    """Plan a synthetic federation in ``root`` without writing any image; return the hospital folders.

    Returns
    -------
    list of Path
        One empty folder per hospital, in spec order (each fills on :func:`materialize`).
    """
    from .render import ANATOMIES
    from .findings import FINDINGS
    from .sites import make_site_specs

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    specs = make_site_specs(n_sites, images_per_site, seed)
    dirs = []
    for spec in specs:
        (root / spec.name).mkdir(exist_ok=True)
        dirs.append(root / spec.name)
    description = {
        "seed": int(seed), "image_size": int(image_size), "anatomies": list(ANATOMIES), "findings": list(FINDINGS),
        "mask_encoding": "8-bit PNG, 0 background, 255 main structure (lungs for chest, bones otherwise)",
        "sites": [dict(spec.to_json(), path=spec.name) for spec in specs],
    }
    (root / "federation.json").write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")
    plan = {"sites": int(n_sites), "images_per_site": int(images_per_site), "seed": int(seed),
            "image_size": int(image_size)}
    (root / PLAN_NAME).write_text(json.dumps(plan, indent=2, sort_keys=True) + "\n")
    return dirs


def read_plan(root: Path) -> dict[str, int] | None:
    """The generator parameters of a planned federation, None when ``root`` holds no plan."""
    path = Path(root) / PLAN_NAME
    if not path.is_file():
        return None
    return {k: int(v) for k, v in json.loads(path.read_text()).items()}


@lru_cache(maxsize=8)
def _specs(n_sites: int, images_per_site: int, seed: int) -> dict[str, Any]:
    from .sites import make_site_specs

    return {s.name: s for s in make_site_specs(n_sites, images_per_site, seed)}


def spec_of(root: Path, name: str):
    """The :class:`~xr0_core.data.synthetic.sites.SiteSpec` of hospital ``name`` in a planned federation."""
    plan = read_plan(root)
    if plan is None:
        raise FileNotFoundError(f"{root} holds no {PLAN_NAME}: not a planned synthetic federation")
    specs = _specs(plan["sites"], plan["images_per_site"], plan["seed"])
    if name not in specs:
        raise KeyError(f"{name} is not one of the {plan['sites']} planned hospitals in {root}")
    return specs[name]


def is_materialized(site_dir: Path) -> bool:
    return (Path(site_dir) / MANIFEST).is_file()


def materialize(site_dir: Path) -> bool:
    """Write the planned hospital ``site_dir`` (its parent holds the plan) unless it is written already.

    Returns
    -------
    bool
        True when this call wrote it; False when it was there (or its parent is no planned federation: a
        given hospital folder is never touched).
    """
    site_dir = Path(site_dir)
    root = site_dir.parent
    if is_materialized(site_dir) or read_plan(root) is None:
        return False
    from .sites import write_site

    plan = read_plan(root)
    spec = spec_of(root, site_dir.name)
    locks = root / ".locks"
    locks.mkdir(exist_ok=True)
    with open(locks / f"{site_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another actor may be writing this hospital right now
        if is_materialized(site_dir):
            return False
        scratch = root / ".building" / f"{site_dir.name}-{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        write_site(spec, scratch, plan["seed"], plan["image_size"])
        site_dir.mkdir(exist_ok=True)
        for part in ("images", "masks"):
            shutil.rmtree(site_dir / part, ignore_errors=True)  # a half-moved earlier attempt
            os.replace(scratch / part, site_dir / part)
        os.replace(scratch / MANIFEST, site_dir / MANIFEST)  # last: the hospital is complete from here on
        shutil.rmtree(scratch, ignore_errors=True)
    return True


def planned_summary(root: Path, name: str) -> dict[str, Any]:
    """What :func:`xr0_core.data.index.index_site` would count in a planned hospital, from its spec alone:
    ``{"usable", "by_anatomy"}`` (every synthetic image is usable)."""
    spec = spec_of(root, name)
    return {"usable": int(spec.n_images), "by_anatomy": {a: c for a, c in spec.anatomy_counts().items() if c}}
