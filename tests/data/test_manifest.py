"""Site manifest: every optional column, labels, JSON annotations, and errors with row numbers."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from xr0_core.data.manifest import MANIFEST_COLUMNS, ManifestError, SiteRecord, load_manifest, write_manifest


def _write(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    return path


FULL_HEADER = list(MANIFEST_COLUMNS) + ["label_nodule", "label_grade"]


def test_parses_every_column(tmp_path):
    csv_path = _write(
        tmp_path / "manifest.csv",
        [
            [" Path ", *FULL_HEADER[1:]],  # header names: case and surrounding spaces do not matter
            [
                "img/a.dcm", "P1", "S1", "Chest", "pa", "Nodule in the right upper lobe,\nno effusion.", "Train",
                "masks/a.png", "[[10, 20.5], [30, 40]]",
                '[{"phrase": "right upper lobe nodule", "box": [1, 2, 30, 40]}]', "1", "2",
            ],
            ["/abs/b.png", "", "", "THORAX", "", "", "", "", "", "", "0", ""],
            ["c.jpg", "P2", "", "mammo", "LAT", "", "test", "", "[]", "", "1.0", "0"],
        ],
    )
    a, b, c = load_manifest(csv_path)
    assert a == SiteRecord(
        path=tmp_path / "img" / "a.dcm",
        patient_id="P1",
        study_id="S1",
        anatomy="chest",
        view="PA",
        report="Nodule in the right upper lobe,\nno effusion.",
        split="train",
        labels={"nodule": 1, "grade": 2},
        mask_path=tmp_path / "masks" / "a.png",
        landmarks=((10.0, 20.5), (30.0, 40.0)),
        boxes=({"phrase": "right upper lobe nodule", "box": (1.0, 2.0, 30.0, 40.0)},),
        row=1,
    )
    assert b.path == Path("/abs/b.png") and b.anatomy == "chest" and b.row == 2
    assert b.labels == {"nodule": 0}  # empty label cell: the key is absent, not 0
    assert b.patient_id is None and b.split is None and b.landmarks is None and b.boxes is None
    assert c.anatomy == "mammo"  # unknown to the vocabulary: the site's own word is kept
    assert c.labels == {"nodule": 1, "grade": 0}  # "1.0" as pandas writes it
    assert c.landmarks == () and c.split == "test"


def test_root_overrides_the_manifest_folder(tmp_path):
    (tmp_path / "meta").mkdir()
    csv_path = _write(tmp_path / "meta" / "m.csv", [["path"], ["x/1.dcm"]])
    (record,) = load_manifest(csv_path, root=tmp_path / "images")
    assert record.path == tmp_path / "images" / "x" / "1.dcm"
    (record,) = load_manifest(csv_path)
    assert record.path == tmp_path / "meta" / "x" / "1.dcm"


def test_every_problem_reported_with_row_numbers(tmp_path):
    csv_path = _write(
        tmp_path / "m.csv",
        [
            ["path", "split", "landmarks", "boxes", "label_effusion"],
            ["a.dcm", "train", "[[1, 2]]", "", "1"],
            ["b.dcm", "validation", "", "", ""],
            ["c.dcm", "", "[[1, 2]", "", ""],
            ["d.dcm", "", "", '[{"phrase": "x", "box": [5, 5, 1, 1]}]', "yes"],
            ["", "", "", "", "-1"],
            ["a.dcm", "", "", "", ""],
            ["e.dcm", "test"],
        ],
    )
    with pytest.raises(ManifestError) as info:
        load_manifest(csv_path)
    message = str(info.value)
    expected = [
        "row 2: split: 'validation' is not one of train, val, test",
        "row 3: landmarks: invalid JSON",
        "row 4: boxes: box 0: need x0 < x1 and y0 < y1",
        "row 4: label_effusion: 'yes' is not an integer class index",
        "row 5: path: empty",
        "row 5: label_effusion: '-1' is negative",
        "row 6: path:",
        "already listed in row 1",
        "row 7: *: 2 cells, the header has 5 columns",
    ]
    for fragment in expected:
        assert fragment in message, fragment
    assert len(info.value.problems) == 8
    assert "row 1:" not in message.replace("in row 1", "")


@pytest.mark.parametrize(
    "header, fragment",
    [
        (["image", "split"], "row 0: path: required column missing"),
        (["path", "age", "Sex"], "row 0: age, sex: unknown column(s)"),
        (["path", "label_"], "a label column needs a name"),
        (["path", "view", "VIEW"], "row 0: view: column(s) appear more than once"),
        (["path;split"], "save the manifest as comma-separated CSV"),
    ],
)
def test_header_errors(tmp_path, header, fragment):
    csv_path = _write(tmp_path / "m.csv", [header, ["a.dcm"] + [""] * (len(header) - 1)])
    with pytest.raises(ManifestError) as info:
        load_manifest(csv_path)
    assert fragment in str(info.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(ManifestError, match="file not found"):
        load_manifest(tmp_path / "missing.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ManifestError, match="row 0: header: the file is empty"):
        load_manifest(tmp_path / "empty.csv")
    (tmp_path / "latin1.csv").write_bytes("path,report\na.dcm,Kn\xe4chern\n".encode("latin-1"))
    with pytest.raises(ManifestError, match="not UTF-8"):
        load_manifest(tmp_path / "latin1.csv")


def test_excel_bom_and_blank_lines(tmp_path):
    (tmp_path / "m.csv").write_bytes("\ufeffpath,label_x\r\na.dcm,1\r\n\r\n,\r\n".encode("utf-8"))
    (record,) = load_manifest(tmp_path / "m.csv")
    assert record.labels == {"x": 1} and record.row == 1


def test_write_then_load_roundtrip(tmp_path):
    records = [
        SiteRecord(
            path=tmp_path / "site" / "img" / "a.dcm",
            patient_id="P1",
            anatomy="knee",
            view="AP",
            report='He said "fine", then left.',
            split="val",
            labels={"fracture": 1},
            mask_path=tmp_path / "site" / "masks" / "a.png",
            landmarks=((1.5, 2.0),),
            boxes=({"phrase": "fracture of the patella", "box": (1.0, 2.0, 3.0, 4.0)},),
        ),
        SiteRecord(path=tmp_path / "elsewhere" / "b.png", labels={"implant": 0}),
    ]
    csv_path = tmp_path / "site" / "manifest.csv"
    write_manifest(records, csv_path, root=tmp_path / "site")
    first_line = csv_path.read_text().splitlines()[1]
    assert first_line.startswith("img/a.dcm,")  # relative inside the root
    loaded = load_manifest(csv_path)
    assert [r.path for r in loaded] == [r.path for r in records]
    assert loaded[0] == SiteRecord(**{**records[0].__dict__, "row": 1})
    assert loaded[1].labels == {"implant": 0} and loaded[1].row == 2
