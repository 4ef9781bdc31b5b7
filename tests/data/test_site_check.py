"""``index_site`` and ``xr0 site check`` on a folder of real CR files mixed with broken ones."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pydicom
import pytest

from xr0_core.cli import run
from xr0_core.cli import site as cli_site
from xr0_core.data.index import SiteDataError, index_site
from xr0_core.data.manifest import ManifestError

BAD_FILES = {
    "broken/truncated.dcm": "truncated pixel data",
    "broken/truncated_j2k.dcm": "truncated pixel data",
    "notes.dcm": "not DICOM",
    "header_only.dcm": "no pixel data",
}


def xr0(*argv: str) -> int:
    """The real ``xr0`` parser with only the ``site`` command (others are built elsewhere)."""
    return run(list(argv), [cli_site])


@pytest.fixture(scope="module")
def site(rg_files, tmp_path_factory) -> Path:
    """The eight pydicom-data CR files (linked, not copied) plus four broken files."""
    root = tmp_path_factory.mktemp("site")
    for name, path in rg_files.items():
        os.symlink(path, root / name)
    (root / "broken").mkdir()
    data = rg_files["RG3_UNCR.dcm"].read_bytes()
    (root / "broken" / "truncated.dcm").write_bytes(data[: len(data) // 2])
    data = rg_files["RG3_J2KR.dcm"].read_bytes()
    (root / "broken" / "truncated_j2k.dcm").write_bytes(data[: len(data) // 2])
    (root / "notes.dcm").write_text("Report: no acute findings.\n" * 10)
    ds = pydicom.dcmread(rg_files["RG1_UNCR.dcm"], stop_before_pixels=True)
    ds.save_as(root / "header_only.dcm")
    # Ignored, not reported: hidden files and files that are not images by name.
    (root / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "README.txt").write_text("site data")
    return root


def test_index_lists_every_bad_file_and_keeps_the_good_ones(site, rg_files):
    index = index_site(site)
    assert len(index.records) == 8 and len(index.sizes) == 8
    assert sorted(r.path.name for r in index.records) == sorted(rg_files)
    reasons = {s.path: s.reason for s in index.skipped}
    assert set(reasons) == set(BAD_FILES)
    for path, fragment in BAD_FILES.items():
        assert reasons[path].startswith(fragment), (path, reasons[path])
    summary = index.summary()
    assert summary["by_anatomy"] == {"chest": 4, "leg": 4}
    assert summary["by_view"] == {"AP": 4, "PA": 4}
    assert summary["height"] == [1760, 1955] and summary["width"] == [1760, 1841]
    # A walked folder groups by a pseudonym of the DICOM PatientID (the privacy unit), never the identifier.
    assert summary["patients"] == 2
    import pydicom

    raw_ids = {str(pydicom.dcmread(r.path, stop_before_pixels=True).PatientID) for r in index.records}
    assert all(r.patient_id.startswith("dicom-") and r.patient_id not in raw_ids for r in index.records)


def test_parallel_workers_give_the_same_index(site):
    serial = index_site(site, verify_pixels=False)
    parallel = index_site(site, verify_pixels=False, workers=2)
    assert parallel.records == serial.records and parallel.sizes == serial.sizes
    assert parallel.skipped == serial.skipped


def test_site_check_json(site, capsys):
    assert xr0("site", "check", "--data", str(site), "--json", "--workers", "1") == 0
    out = capsys.readouterr().out
    summary = json.loads(out)  # stdout holds nothing but the JSON object
    assert summary["usable"] == 8
    assert {s["path"] for s in summary["skipped"]} == set(BAD_FILES)
    assert all(s["reason"] for s in summary["skipped"])
    assert summary["by_anatomy"] == {"chest": 4, "leg": 4}


def test_site_check_human_report_goes_to_stderr(site, capsys):
    assert xr0("site", "check", "--data", str(site), "--headers-only") == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "usable images" in captured.err and "notes.dcm" in captured.err


def test_manifest_drives_the_index(site, tmp_path):
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "patient_id", "anatomy", "split", "report", "mask_path", "label_fracture"])
        writer.writerow(["RG1_UNCR.dcm", "P1", "", "train", "Clear lungs.", "", "0"])
        writer.writerow(["RG3_J2KI.dcm", "P2", "knee", "test", "", "masks/missing.png", "1"])
        writer.writerow(["gone.dcm", "P3", "", "val", "", "", ""])
        writer.writerow(["notes.dcm", "P4", "", "val", "", "", ""])
    index = index_site(site, manifest)
    first, second = index.records
    assert first.anatomy == "chest" and first.view == "PA"  # filled from DICOM tags
    assert second.anatomy == "knee" and second.mask_path is None  # the manifest wins; lost mask dropped
    reasons = {s.path: s.reason for s in index.skipped}
    assert reasons["gone.dcm"] == "file not found"
    assert reasons["notes.dcm"].startswith("not DICOM")
    assert "mask file not found" in reasons["masks/missing.png"]
    summary = index.summary()
    assert summary["patients"] == 2 and summary["labels"] == ["fracture"]
    assert summary["by_split"] == {"test": 1, "train": 1}
    assert summary["has"]["report"] == 1 and summary["has"]["labels"] == 2


def test_manifest_csv_in_the_folder_is_used(tmp_path, rg_files):
    os.symlink(rg_files["RG3_J2KI.dcm"], tmp_path / "leg.dcm")
    os.symlink(rg_files["RG1_J2KI.dcm"], tmp_path / "chest.dcm")
    (tmp_path / "manifest.csv").write_text("path,split\nleg.dcm,train\n")
    index = index_site(tmp_path)
    assert [r.path.name for r in index.records] == ["leg.dcm"]  # chest.dcm is not in the manifest
    assert index.records[0].row == 1


def test_header_only_screening_finds_the_same_bad_files(site):
    # Without decoding: declared Pixel Data lengths are checked against the file size.
    index = index_site(site, verify_pixels=False)
    reasons = {s.path: s.reason for s in index.skipped}
    assert set(reasons) == set(BAD_FILES)
    for path, fragment in BAD_FILES.items():
        assert reasons[path].startswith(fragment), (path, reasons[path])
    assert index.sizes == index_site(site).sizes


def test_unusable_sites_fail_with_a_message(tmp_path, site, capsys):
    with pytest.raises(SiteDataError, match="data folder not found"):
        index_site(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SiteDataError, match="no image files"):
        index_site(tmp_path / "empty")
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.dcm").write_text("not an image")
    with pytest.raises(SiteDataError, match="no usable image.*not DICOM"):
        index_site(only_bad)

    bad_manifest = tmp_path / "bad.csv"
    bad_manifest.write_text("path,split,colour\nRG1_UNCR.dcm,training,red\n")
    with pytest.raises(ManifestError, match="unknown column"):
        index_site(site, bad_manifest)

    for argv, fragment in [
        (["--data", str(tmp_path / "nope")], "data folder not found"),
        (["--data", str(tmp_path / "empty")], "no image files"),
        (["--data", str(site), "--manifest", str(tmp_path / "missing.csv")], "manifest not found"),
        (["--data", str(site), "--manifest", str(bad_manifest)], "row 0: colour: unknown column"),
    ]:
        assert xr0("site", "check", *argv, "--json") != 0
        captured = capsys.readouterr()
        assert captured.out == "" and fragment in captured.err, captured.err

    bad_manifest.write_text("path,split\nRG1_UNCR.dcm,training\nRG3_UNCR.dcm,val\nRG3_J2KI.dcm,dev\n")
    assert xr0("site", "check", "--data", str(site), "--manifest", str(bad_manifest)) != 0
    err = capsys.readouterr().err
    assert "row 1: split: 'training'" in err and "row 3: split: 'dev'" in err
