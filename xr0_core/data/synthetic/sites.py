"""Synthetic hospitals: non-IID site specifications and the files each site holds (D7, D12).

A federation is ``n_sites`` hospitals that differ in three ways, as real ones do:

- **case mix**: each site's anatomy mix is drawn from ``Dirichlet(alpha)`` (``alpha = 0.5``: most
  sites see mostly two or three body parts), every anatomy present at some site; site sizes differ
  by up to ``size_skew`` around ``images_per_site`` while the total stays ``n_sites *
  images_per_site``; finding prevalence differs by a per-site factor;
- **scanner**: photometric, bit depth, rescale, window, spacing tags and transfer syntaxes,
  exposure, noise and collimation tendencies (:mod:`.dicom_writer`);
- **patients**: fake ids ``SYN-<site>-<n>``, one to three images per study, sometimes a second
  study of the same patient; splits (train / val / test about 70 / 10 / 20) are by patient.

Layout written by :func:`write_federation`::

    <out>/federation.json             the specs (and the seed) that produced everything
    <out>/<site>/manifest.csv         one row per image (see xr0_core.data.manifest)
    <out>/<site>/images/<site>_00000.dcm
    <out>/<site>/masks/<site>_00000.png   8-bit, 0 = background, 255 = main structure
                                          (lungs for chest, bones otherwise), image size

Every random choice comes from ``xr0_core.runtime.derive_seed(seed, site, ...)``: the same seed
gives the same bytes, whatever the order sites are written in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xr0_core.data.synthetic.dicom_writer import (
    TRANSFER_SYNTAXES,
    DicomIdentity,
    choose_encoding,
    dicom_date,
    write_dicom,
)
from xr0_core.data.synthetic.findings import FINDINGS
from xr0_core.data.synthetic.phantoms import VIEWS
from xr0_core.data.synthetic.render import ANATOMIES, render_image
from xr0_core.runtime import derive_seed, numpy_rng

SPLIT_FRACTIONS = (("train", 0.7), ("val", 0.1), ("test", 0.2))


@dataclass(frozen=True)
class SiteSpec:
    """One synthetic hospital.

    Attributes
    ----------
    name : str
        Site name, also its folder name (``site00``, ``site01``, ...).
    anatomy_mix : dict of str to float
        Fraction of the site's images per anatomy (sums to 1; the written counts match it exactly).
    n_images : int
    scanner : dict
        Encoding and detector tendencies (JSON-serialisable), see :func:`make_site_specs`.
    finding_scale : dict of str to float
        Multiplier on each finding's prevalence at this site.
    """

    name: str
    anatomy_mix: dict[str, float]
    n_images: int
    scanner: dict
    finding_scale: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "anatomy_mix": self.anatomy_mix, "n_images": self.n_images,
                "scanner": self.scanner, "finding_scale": self.finding_scale}

    def anatomy_counts(self) -> dict[str, int]:
        """Images per anatomy (largest-remainder rounding of ``anatomy_mix * n_images``)."""
        names = [a for a in ANATOMIES if a in self.anatomy_mix]
        counts = _apportion(self.n_images, np.array([self.anatomy_mix[a] for a in names], dtype=float))
        return {a: int(c) for a, c in zip(names, counts)}


def make_site_specs(
    n_sites: int,
    images_per_site: int,
    seed: int,
    *,
    alpha: float = 0.5,
    size_skew: float = 0.2,
) -> list[SiteSpec]:
    """Draw ``n_sites`` non-IID hospital specifications.

    Parameters
    ----------
    n_sites : int
        At least 1.
    images_per_site : int
        Average images per site (the total is exactly ``n_sites * images_per_site``).
    seed : int
    alpha : float
        Dirichlet concentration of the anatomy mixes (smaller = more skewed).
    size_skew : float
        Site sizes vary within ``images_per_site * (1 +- size_skew)`` before rounding.

    Returns
    -------
    list of SiteSpec
        Every anatomy has at least ``total // 24`` images (at least one) somewhere, when sites
        have images to spare.
    """
    if int(n_sites) < 1:
        raise ValueError(f"n_sites must be >= 1, got {n_sites}")
    if int(images_per_site) < 1:
        raise ValueError(f"images_per_site must be >= 1, got {images_per_site}")
    if not 0.0 <= size_skew < 1.0:
        raise ValueError(f"size_skew must be in [0, 1), got {size_skew}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    n_sites, images_per_site = int(n_sites), int(images_per_site)
    g = numpy_rng(seed, "federation")
    mixes = g.dirichlet(np.full(len(ANATOMIES), alpha), size=n_sites)
    shares = g.uniform(1.0 - size_skew, 1.0 + size_skew, size=n_sites)
    sizes = _apportion(n_sites * images_per_site, shares)
    counts = np.stack([_apportion(int(n), mix) for n, mix in zip(sizes, mixes)])
    # Skewed, but every anatomy keeps enough images somewhere for its downstream tasks to be measurable.
    _cover_every_anatomy(counts, mixes, minimum=max(1, int(counts.sum()) // (4 * len(ANATOMIES))))

    specs = []
    for i in range(n_sites):
        n = int(sizes[i])
        mix = {a: float(counts[i, k]) / n if n else 0.0 for k, a in enumerate(ANATOMIES) if counts[i, k] > 0}
        specs.append(SiteSpec(
            name=f"site{i:02d}",
            anatomy_mix=mix,
            n_images=n,
            scanner=_draw_scanner(numpy_rng(seed, "scanner", i)),
            finding_scale={f: round(float(x), 3) for f, x in zip(FINDINGS, g.uniform(0.6, 1.5, len(FINDINGS)))},
        ))
    return specs


def _draw_scanner(g: np.random.Generator) -> dict[str, Any]:
    ts = g.dirichlet(np.full(len(TRANSFER_SYNTAXES), 0.8)) + 0.04
    bits = g.dirichlet(np.ones(3)) + 0.05
    return {
        "modality": str(g.choice(["CR", "DX"])),
        "manufacturer": f"XR0 Phantom Imaging model {int(g.integers(100, 999))}",
        "p_monochrome1": round(float(g.beta(0.6, 0.6)), 3),
        "bits_stored": {b: round(float(w / bits.sum()), 3) for b, w in zip(("8", "12", "16"), bits)},
        "p_signed": round(float(g.choice([0.0, 0.0, 0.5])), 3),
        "p_rescale": round(float(g.uniform(0.0, 0.6)), 3),
        "p_window": round(float(g.uniform(0.2, 0.9)), 3),
        "transfer_syntaxes": {k: round(float(w / ts.sum()), 3) for k, w in zip(TRANSFER_SYNTAXES, ts)},
        "spacing_tags": str(g.choice(["PixelSpacing", "ImagerPixelSpacing", "both"])),
        "exposure_scale": round(float(g.uniform(0.75, 1.3)), 3),
        "noise_scale": round(float(g.uniform(0.7, 1.5)), 3),
        "collimation_rate": round(float(g.uniform(0.0, 0.4)), 3),
    }


def write_site(spec: SiteSpec, out_dir: Path, seed: int, image_size: int = 128) -> list:
    """Write one hospital's images, masks and manifest into ``out_dir``.

    Parameters
    ----------
    spec : SiteSpec
    out_dir : Path
        The site folder (created): ``images/``, ``masks/``, ``manifest.csv``.
    seed : int
        Federation seed; image ``i`` of site ``spec.name`` renders from ``derive_seed(seed, name, i)``.
    image_size : int
        Square image side in pixels.

    Returns
    -------
    list of xr0_core.data.manifest.SiteRecord
        The manifest rows, with absolute paths.
    """
    from PIL import Image

    from xr0_core.data.manifest import SiteRecord, write_manifest

    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    plan = _plan_studies(spec, seed)
    splits = _patient_splits(sorted({p for p, *_ in plan}, key=_patient_number), numpy_rng(seed, spec.name, "split"))
    scanner = spec.scanner
    records = []
    for index, (patient, study, anatomy, view, study_date, series_number) in enumerate(plan):
        stem = f"{spec.name}_{index:05d}"
        phantom = render_image(
            anatomy,
            numpy_rng(seed, spec.name, index),
            image_size,
            view=view,
            finding_scale=spec.finding_scale,
            exposure_scale=scanner["exposure_scale"],
            noise_scale=scanner["noise_scale"],
            collimation_rate=scanner["collimation_rate"],
        )
        enc = choose_encoding(scanner, numpy_rng(seed, spec.name, index, "dicom"))
        ident = DicomIdentity(
            patient_id=patient,
            study_id=study,
            study_uid=_uid(seed, spec.name, study),
            series_uid=_uid(seed, spec.name, study, series_number),
            sop_uid=_uid(seed, spec.name, index, "sop"),
            instance_number=1,
            series_number=series_number,
            study_date=study_date,
            institution=f"Synthetic Hospital {spec.name}",
            manufacturer=scanner["manufacturer"],
            patient_sex="MF"[derive_seed(seed, spec.name, patient) % 2],
        )
        image_path = out_dir / "images" / f"{stem}.dcm"
        mask_path = out_dir / "masks" / f"{stem}.png"
        write_dicom(image_path, phantom.image, enc, ident, anatomy=anatomy, view=phantom.view,
                    laterality=phantom.laterality, spacing_mm=phantom.pixel_spacing_mm)
        mask = phantom.masks[phantom.main_structure].astype(np.uint8) * 255
        Image.fromarray(mask, mode="L").save(mask_path, optimize=False)
        records.append(SiteRecord(
            path=image_path,
            patient_id=patient,
            study_id=study,
            anatomy=anatomy,
            view=phantom.view,
            report=phantom.report,
            split=splits[patient],
            labels=dict(phantom.labels),
            mask_path=mask_path,
            landmarks=tuple((round(x, 2), round(y, 2)) for x, y in phantom.landmarks.values()),
            boxes=tuple({"phrase": f["phrase"], "box": tuple(round(c, 2) for c in f["box"])} for f in phantom.findings),
        ))
    write_manifest(records, out_dir / "manifest.csv", root=out_dir)
    return records


def write_federation(
    out_dir: Path, n_sites: int, images_per_site: int, seed: int, image_size: int = 128
) -> list[Path]:
    """Write a whole federation: one folder per site plus ``federation.json``.

    Returns
    -------
    list of Path
        The site folders, in site order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = make_site_specs(n_sites, images_per_site, seed)
    paths = []
    for spec in specs:
        path = out_dir / spec.name
        write_site(spec, path, seed, image_size)
        paths.append(path)
    description = {
        "seed": int(seed),
        "image_size": int(image_size),
        "anatomies": list(ANATOMIES),
        "findings": list(FINDINGS),
        "mask_encoding": "8-bit PNG, 0 background, 255 main structure (lungs for chest, bones otherwise)",
        "sites": [dict(spec.to_json(), path=spec.name) for spec in specs],
    }
    (out_dir / "federation.json").write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")
    return paths


# ------------------------------------------------------------------------------------------ helpers


def _plan_studies(spec: SiteSpec, seed: int) -> list[tuple[str, str, str, str | None, str, int]]:
    """(patient, study, anatomy, view, date, series number) per image, studies of 1-3 views."""
    g = numpy_rng(seed, spec.name, "patients")
    remaining = dict(spec.anatomy_counts())
    plan: list[tuple[str, str, str, str | None, str, int]] = []
    patients: list[str] = []
    n_studies = 0
    while sum(remaining.values()) > 0:
        names = [a for a in ANATOMIES if remaining.get(a, 0) > 0]
        weights = np.array([remaining[a] for a in names], dtype=float)
        anatomy = names[int(g.choice(len(names), p=weights / weights.sum()))]
        k = min(remaining[anatomy], int(g.choice([1, 2, 3], p=[0.55, 0.35, 0.1])))
        remaining[anatomy] -= k
        if patients and g.random() < 0.15:
            patient = patients[int(g.integers(len(patients)))]  # a follow-up study
        else:
            patient = f"SYN-{spec.name}-{len(patients) + 1:04d}"
            patients.append(patient)
        n_studies += 1
        study = f"{spec.name}-S{n_studies:04d}"
        date = dicom_date(g)
        views = [v for v, _ in VIEWS[anatomy]]
        for j in range(k):
            # Several images in one study are its different views (PA + LAT), as radiographers take them.
            view = views[j % len(views)] if k > 1 and len(views) > 1 else None
            plan.append((patient, study, anatomy, view, date, j + 1))
    return plan


def _patient_splits(patients: list[str], g: np.random.Generator) -> dict[str, str]:
    """About 70 / 10 / 20 % of patients to train / val / test; all train below three patients."""
    order = [patients[i] for i in g.permutation(len(patients))]
    n = len(order)
    if n < 3:
        return {p: "train" for p in order}
    n_test = max(1, int(round(SPLIT_FRACTIONS[2][1] * n)))
    n_val = max(1, int(round(SPLIT_FRACTIONS[1][1] * n)))
    out = {}
    for i, p in enumerate(order):
        out[p] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return out


def _patient_number(patient: str) -> int:
    return int(patient.rsplit("-", 1)[1])


def _uid(*parts: object) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def _apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Split ``total`` into integers proportional to ``weights`` (largest remainder; sums to ``total``)."""
    weights = np.asarray(weights, dtype=float)
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(int)
    short = total - int(counts.sum())
    if short > 0:
        # Ties broken by index (stable argsort) so the result is deterministic.
        order = np.argsort(-(exact - counts), kind="stable")
        counts[order[:short]] += 1
    return counts


def _cover_every_anatomy(counts: np.ndarray, mixes: np.ndarray, minimum: int) -> None:
    """Top each anatomy up to ``minimum`` images, taken from the sites that like it most (in place).

    An image moves from a site's most frequent anatomy, and only while that site keeps at least two
    of it, so site sizes never change and no site loses its dominant body part.
    """
    for k in range(counts.shape[1]):
        for site in np.argsort(-mixes[:, k], kind="stable"):
            while counts[:, k].sum() < minimum:
                others = counts[site].copy()
                others[k] = -1
                donor = int(np.argmax(others))
                if counts[site, donor] < 2:
                    break
                counts[site, donor] -= 1
                counts[site, k] += 1
