"""Hospitals of a simulated federation: synthetic ones written on demand, or given folders checked first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xr0_core.data.index import hospital_dirs

SYNTH_MARKER = ".xr0-simulate.json"  # our record of the generator parameters (the generator writes its own federation.json)


class SimulationDataError(ValueError):
    """The hospitals folder cannot be used; the message says what to fix."""


def ensure_synthetic(root: Path, n_sites: int, images_per_site: int, seed: int, image_size: int,
                     lazy: bool = False) -> list[Path]:
    """Write synthetic hospitals into ``root`` unless the same ones (same parameters) are already there.

    With ``lazy`` only the plan is written (:func:`xr0_core.data.synthetic.lazy.plan_federation`: specs and one
    empty folder per hospital); each hospital's images are written when its ClientApp first resolves it, so a
    1,000-hospital federation that samples a fraction per round writes only the hospitals it uses. Either way
    the bytes of a hospital are the same."""
    wanted = {"sites": n_sites, "images_per_site": images_per_site, "seed": seed, "image_size": image_size}
    marker = root / SYNTH_MARKER
    if marker.exists():
        try:
            existing = json.loads(marker.read_text()).get("parameters", {})
        except ValueError:
            existing = {}
        if existing == wanted and len(hospital_dirs(root)) == n_sites:
            dirs = hospital_dirs(root)
            if not lazy:  # planned lazily by an earlier run; every hospital is wanted now
                from xr0_core.data.synthetic.lazy import materialize

                for d in dirs:
                    materialize(d)
            return dirs
        if any(root.iterdir()):
            raise SimulationDataError(
                f"{root} holds synthetic hospitals made with {existing}, not {wanted}; "
                "use another --out or delete that folder"
            )
    if lazy:
        from xr0_core.data.synthetic.lazy import plan_federation

        dirs = plan_federation(root, n_sites, images_per_site, seed, image_size)
    else:
        from xr0_core.data.synthetic import write_federation

        dirs = write_federation(root, n_sites, images_per_site, seed, image_size=image_size)
    marker.write_text(json.dumps({"parameters": wanted}, indent=2, sort_keys=True))
    return [Path(d) for d in dirs]


def describe_sites(dirs: list[Path], state_root: Path) -> list[dict[str, Any]]:
    """Per hospital: name, folders, image count, anatomy mix and scanner settings (for the report)."""
    from xr0_core.data.index import index_site
    from xr0_core.data.synthetic.lazy import is_materialized, planned_summary, read_plan

    out = []
    planned = {d.parent for d in dirs if read_plan(d.parent) is not None}
    for d in dirs:
        if d.parent in planned and not is_materialized(d):  # not written yet: counted from its spec
            summary = {**planned_summary(d.parent, d.name), "skipped": []}
        else:
            summary = index_site(d, verify_pixels=False).summary()
        out.append(
            {
                "name": d.name,
                "data_dir": str(d),
                "state_dir": str(state_root / d.name),
                "images": summary["usable"],
                "skipped": len(summary["skipped"]),
                "by_anatomy": summary["by_anatomy"],
            }
        )
    return out


def check_given(root: Path) -> list[Path]:
    """Hospital folders under a user-given ``--data`` root, each with at least one usable image."""
    if not root.is_dir():
        raise SimulationDataError(f"--data {root} is not a folder; it must hold one sub-folder per hospital")
    dirs = hospital_dirs(root)
    if not dirs:
        raise SimulationDataError(f"--data {root} has no sub-folders; put each hospital's images in its own folder")
    return dirs
