"""Synthetic hospitals: determinism, non-IID sites, real DICOM encodings, exact ground truth."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from xr0_core.cli import run as cli_run
from xr0_core.cli import synth as cli_synth
from xr0_core.data.images import read_image
from xr0_core.data.manifest import load_manifest
from xr0_core.data.synthetic import (
    ANATOMIES,
    FINDINGS,
    PREVALENCE,
    make_site_specs,
    render_image,
    write_federation,
)
from xr0_core.runtime import numpy_rng

SIZE = 64


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fed")
    write_federation(out, n_sites=3, images_per_site=24, seed=7, image_size=SIZE)
    return out


def _site_records(federation: Path):
    description = json.loads((federation / "federation.json").read_text())
    for site in description["sites"]:
        yield site, load_manifest(federation / site["path"] / "manifest.csv")


def _rerender(site: dict, index: int, record, seed: int = 7):
    scanner = site["scanner"]
    return render_image(
        record.anatomy, numpy_rng(seed, site["name"], index), SIZE, view=record.view,
        finding_scale=site["finding_scale"], exposure_scale=scanner["exposure_scale"],
        noise_scale=scanner["noise_scale"], collimation_rate=scanner["collimation_rate"],
    )


# ------------------------------------------------------------------------------------------ determinism


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    digests = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_federation(tmp_path / name, n_sites=2, images_per_site=6, seed=seed, image_size=SIZE)
        digests.append(_tree_digest(tmp_path / name))
    assert digests[0] == digests[1]
    assert digests[0] != digests[2]


# ------------------------------------------------------------------------------------------ site specs


def test_sites_are_non_iid_and_cover_every_anatomy():
    specs = make_site_specs(n_sites=4, images_per_site=40, seed=0)
    assert sum(s.n_images for s in specs) == 160
    assert len({s.n_images for s in specs}) > 1  # quantity skew
    totals = Counter()
    for s in specs:
        counts = s.anatomy_counts()
        assert sum(counts.values()) == s.n_images
        totals.update(counts)
    assert set(totals) == set(ANATOMIES) and len(ANATOMIES) >= 5
    mixes = [np.array([s.anatomy_mix.get(a, 0.0) for a in ANATOMIES]) for s in specs]
    tvd = max(0.5 * np.abs(a - b).sum() for i, a in enumerate(mixes) for b in mixes[i + 1 :])
    assert tvd > 0.2
    assert len({json.dumps(s.scanner, sort_keys=True) for s in specs}) == len(specs)


def test_bad_federation_arguments_are_refused():
    with pytest.raises(ValueError, match="n_sites"):
        make_site_specs(0, 10, 0)
    with pytest.raises(ValueError, match="unknown anatomy"):
        render_image("elbow", np.random.default_rng(0), SIZE)
    with pytest.raises(ValueError, match="cannot occur on hand"):
        render_image("hand", np.random.default_rng(0), SIZE, findings=["nodule"])


# ------------------------------------------------------------------------------------------ DICOM files


def test_encodings_and_photometrics_vary(federation):
    syntaxes, photometrics, bits = set(), set(), set()
    for _, records in _site_records(federation):
        for r in records:
            ds = pydicom.dcmread(r.path, stop_before_pixels=True)
            syntaxes.add(ds.file_meta.TransferSyntaxUID.keyword)
            photometrics.add(ds.PhotometricInterpretation)
            bits.add(int(ds.BitsStored))
            assert ds.PatientID.startswith("SYN-") and str(ds.PatientName) == ds.PatientID
            assert ds.Modality in ("CR", "DX") and ds.Rows == ds.Columns == SIZE
    assert len(syntaxes) >= 3
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"}
    assert len(bits) >= 2


def test_every_image_reads_back_as_its_phantom(federation):
    for site, records in _site_records(federation):
        for index, r in enumerate(records):
            loaded = read_image(r.path)
            assert loaded.pixels.shape == (SIZE, SIZE)
            assert loaded.meta["anatomy"] == r.anatomy
            phantom = _rerender(site, index, r)
            # Positive correlation whatever the photometric: bone is bright after the reader's inversion.
            corr = np.corrcoef(loaded.pixels.ravel(), phantom.image.ravel())[0, 1]
            assert corr > 0.95, (r.path.name, corr)


# ------------------------------------------------------------------------------------------ manifests


def test_manifests_masks_labels_reports_splits(federation):
    for site, records in _site_records(federation):
        header = (federation / site["path"] / "manifest.csv").read_text().splitlines()[0].split(",")
        assert {f"label_{f}" for f in FINDINGS} <= set(header)
        by_patient: dict[str, set] = {}
        for r in records:
            mask = np.array(Image.open(r.mask_path))
            assert mask.shape == (SIZE, SIZE) and mask.dtype == np.uint8
            assert set(np.unique(mask)) <= {0, 255} and mask.max() == 255
            assert set(r.labels) == set(FINDINGS)
            for box in r.boxes:
                x0, y0, x1, y1 = box["box"]
                assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
                assert box["phrase"] in r.report
            for name, value in r.labels.items():
                if value:
                    assert name in r.report and any(name in b["phrase"] for b in r.boxes)
            assert r.landmarks and all(0 <= x <= SIZE and 0 <= y <= SIZE for x, y in r.landmarks)
            by_patient.setdefault(r.patient_id, set()).add(r.split)
        assert all(len(splits) == 1 for splits in by_patient.values())
        assert {s for splits in by_patient.values() for s in splits} == {"train", "val", "test"}


def test_landmark_count_is_fixed_per_anatomy():
    for anatomy in ANATOMIES:
        counts = {len(render_image(anatomy, np.random.default_rng(s), SIZE).landmarks) for s in range(6)}
        assert len(counts) == 1, (anatomy, counts)


# ------------------------------------------------------------------------------------------ findings


@pytest.mark.parametrize("anatomy,finding", [(a, f) for a in ANATOMIES for f in PREVALENCE[a]])
def test_finding_box_covers_what_was_drawn(anatomy, finding):
    """Same patient with and without the finding: the difference lies inside the finding's box."""
    drawn = 0
    for seed in range(4):
        with_it = render_image(anatomy, np.random.default_rng(seed), 96, findings=[finding])
        without = render_image(anatomy, np.random.default_rng(seed), 96, findings=[])
        if not with_it.labels[finding]:
            continue  # no room for it on this patient (rare): label 0, no box
        drawn += 1
        box = next(b for b in with_it.findings if b["name"] == finding)
        x0, y0, x1, y1 = (int(round(c)) for c in box["box"])
        assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96
        diff = np.abs(with_it.image - without.image)
        inside = np.zeros_like(diff, dtype=bool)
        inside[max(0, y0 - 2) : y1 + 2, max(0, x0 - 2) : x1 + 2] = True  # the blur spreads edges a pixel
        assert diff[inside].sum() > 0.85 * diff.sum()
        assert diff[y0:y1, x0:x1].max() > 0.06  # visibly there, not a faint tail
        assert box["phrase"] in with_it.report and finding in with_it.report
        assert without.labels[finding] == 0
    assert drawn >= 3


# ------------------------------------------------------------------------------------------ CLI


def test_cli_synth_json(tmp_path, capsys):
    out = tmp_path / "fed"
    argv = ["synth", "--out", str(out), "--sites", "2", "--images-per-site", "5", "--seed", "1",
            "--image-size", "48", "--json"]
    assert cli_run(argv, [cli_synth]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["out"] == str(out)
    assert [s["name"] for s in summary["sites"]] == ["site00", "site01"]
    assert sum(s["images"] for s in summary["sites"]) == 10
    for s in summary["sites"]:
        assert sum(s["by_anatomy"].values()) == s["images"]
        assert len(list((Path(s["path"]) / "images").glob("*.dcm"))) == s["images"]
    # A second run into the same folder must not silently mix federations.
    assert cli_run(argv, [cli_synth]) == 2
    assert "not empty" in capsys.readouterr().err
    assert cli_run(argv + ["--overwrite"], [cli_synth]) == 0
