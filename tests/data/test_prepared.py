"""Prepared site cache (D16): incremental prepare, corrupt shards, same images as the in-RAM cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xr0_core.data.dataset import ImageCache
from xr0_core.data.manifest import SiteRecord
from xr0_core.data.prepared import (
    INDEX_NAME,
    PreparedImages,
    prepare_site,
    slot_bytes,
    verify_shards,
    PreparedIndex,
)

LOAD = 24


def _png(path: Path, seed: int, size: tuple[int, int] = (40, 52)) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(path)
    return path


def _site(tmp_path: Path, n: int) -> Path:
    data = tmp_path / "data"
    for i in range(n):
        _png(data / f"img{i:02d}.png", i)
    (data / "notes.txt").write_text("not an image")
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)  # signature, no image
    return data


def _records(data: Path) -> list[SiteRecord]:
    return [SiteRecord(path=p) for p in sorted(data.glob("img*.png"))]


def test_prepared_images_match_in_ram_cache(tmp_path):
    data = _site(tmp_path, 5)
    out = tmp_path / "prep"
    report = prepare_site(data, out, LOAD, workers=1, shard_images=2)
    assert (report.images, report.unusable, report.added) == (5, 1, 6)  # broken.png is unusable; .txt not a candidate
    records = _records(data)
    prepared = PreparedImages(records, out)
    ram = ImageCache(records, LOAD, progress=False).decode()
    assert len(prepared) == len(ram) == 5 and prepared.kept == ram.kept
    for i in range(5):
        x = prepared[i]
        assert x.shape == (1, LOAD, LOAD) and x.dtype == torch.float32
        # uint16 quantization (1/65535) vs float16 storage (2^-11 near 1): same image within fp16's step
        assert torch.allclose(x, ram[i], atol=6e-4)
    # An unusable file is served as skipped with its reason, not silently dropped.
    bad = PreparedImages([SiteRecord(path=data / "broken.png")], out)
    assert len(bad) == 0 and "PNG" in bad.skipped[0][1]
    # Index keeps a stable per-image id (content hash) for seeding.
    assert len(prepared.content_sha256(0)) == 64


def test_incremental_prepare_add_change_delete(tmp_path):
    data = _site(tmp_path, 4)
    out = tmp_path / "prep"
    prepare_site(data, out, LOAD, shard_images=3)
    again = prepare_site(data, out, LOAD, shard_images=3)
    assert (again.added, again.changed, again.removed, again.decoded) == (0, 0, 0, 0)

    before = PreparedImages(_records(data), out)
    old1 = before[1].clone()
    _png(data / "img04.png", 99)  # add
    _png(data / "img01.png", 1234)  # change (new content, new mtime)
    os.utime(data / "img01.png", ns=(1, 1))  # make sure the mtime differs even on coarse clocks
    (data / "img02.png").unlink()  # delete
    report = prepare_site(data, out, LOAD, shard_images=3)
    assert (report.added, report.changed, report.removed, report.decoded) == (1, 1, 1, 2)
    assert report.images == 4

    records = _records(data)
    after = PreparedImages(records, out)
    ram = ImageCache(records, LOAD, progress=False).decode()
    assert [r.path.name for r in after.kept] == ["img00.png", "img01.png", "img03.png", "img04.png"]
    for i in range(4):
        assert torch.allclose(after[i], ram[i], atol=6e-4)
    assert not torch.allclose(after[1], old1, atol=1e-2)  # the changed file was re-prepared

    index = json.loads((out / INDEX_NAME).read_text())
    assert "img02.png" not in index["images"]
    # Shards on disk are exactly the indexed ones (a fully dead shard is deleted).
    assert sorted(p.name for p in out.glob("shard-*.bin")) == sorted(index["shards"])


def test_corrupt_shard_detected_never_read_and_rebuilt(tmp_path, caplog):
    data = _site(tmp_path, 4)
    out = tmp_path / "prep"
    prepare_site(data, out, LOAD, shard_images=2)
    records = _records(data)
    good = [x.clone() for x in PreparedImages(records, out)]
    index = PreparedIndex.load(out)
    entry = index.images["img02.png"]
    shard = out / entry["shard"]
    raw = bytearray(shard.read_bytes())
    pos = entry["slot"] * slot_bytes(LOAD, "uint16") + 10
    raw[pos] ^= 0xFF  # one flipped byte in one image
    shard.write_bytes(bytes(raw))

    assert verify_shards(out, index) == [entry["shard"]]
    images = PreparedImages(records, out)
    with caplog.at_level("WARNING"):
        x = images[2]
    # The corrupt slot is not used: the source file is decoded instead, with a warning.
    assert images.corrupt_reads == 1 and "decoding the source file instead" in caplog.text
    assert torch.equal(x, good[2])

    report = prepare_site(data, out, LOAD, shard_images=2)
    assert report.corrupt_shards == [entry["shard"]] and report.decoded == 2
    rebuilt = PreparedImages(records, out)
    assert all(torch.equal(rebuilt[i], good[i]) for i in range(4)) and rebuilt.corrupt_reads == 0
    assert verify_shards(out, PreparedIndex.load(out)) == []


def test_truncated_shard_and_killed_run_are_recovered(tmp_path):
    data = _site(tmp_path, 3)
    out = tmp_path / "prep"
    prepare_site(data, out, LOAD, shard_images=2)
    index = PreparedIndex.load(out)
    name = sorted(index.shards)[0]
    with open(out / name, "r+b") as fh:
        fh.truncate(100)
    (out / "shard-00099.bin").write_bytes(b"left over by a killed run")
    report = prepare_site(data, out, LOAD, shard_images=2)
    assert report.corrupt_shards == [name]
    assert not (out / "shard-00099.bin").exists()
    assert len(PreparedImages(_records(data), out)) == 3


@pytest.mark.slow  # spawned worker processes
def test_parallel_prepare_equals_serial(tmp_path):
    data = _site(tmp_path, 6)
    a = prepare_site(data, tmp_path / "a", LOAD, workers=1)
    b = prepare_site(data, tmp_path / "b", LOAD, workers=2)
    assert a.images == b.images == 6
    records = _records(data)
    pa, pb = PreparedImages(records, tmp_path / "a"), PreparedImages(records, tmp_path / "b")
    assert all(torch.equal(pa[i], pb[i]) for i in range(6))


def test_open_site_images_picks_prepared_and_trains(tmp_path):
    from xr0_core.config import from_flat
    from xr0_core.data.source import open_site_images
    from xr0_core.train.trainer import SiteTrainer

    data = _site(tmp_path, 6)
    cfg = from_flat({"model.backbone": "vit-micro-p8", "model.img-size": 16, "ssl.local-size": 8,
                     "train.load-size": LOAD, "train.batch-size": 4, "train.image-cache": "prepared",
                     "ssl.n-local-crops": 2})
    records = _records(data)
    src = open_site_images(cfg, records, tmp_path / "state", data_dir=data)
    assert isinstance(src, PreparedImages) and len(src) == 6
    assert (tmp_path / "state" / "prepared" / f"L{LOAD}-uint16" / INDEX_NAME).is_file()
    ram_cfg = from_flat({**cfg.to_flat(), "train.image-cache": "auto"})
    assert not isinstance(open_site_images(ram_cfg, records, None), PreparedImages)
    # auto: an existing prepared folder is used even for a small site
    assert isinstance(open_site_images(ram_cfg, records, tmp_path / "state", data_dir=data), PreparedImages)
    trainer = SiteTrainer(cfg, records, site="s", cache=src)
    metrics = trainer.train(2, start_step=0, total_steps=2)
    assert np.isfinite(metrics["loss"])


def test_prepare_cli(tmp_path):
    from cli import main

    data = _site(tmp_path, 3)
    rc = main(["site", "prepare", "--data", str(data), "--state-dir", str(tmp_path / "st"), "--workers", "1",
               "--load-size", str(LOAD), "--json"])
    assert rc == 0
    assert (tmp_path / "st" / "prepared" / f"L{LOAD}-uint16" / INDEX_NAME).is_file()
    with pytest.raises(SystemExit):
        main(["site", "prepare", "--data", str(data), "--dtype", "float32"])
