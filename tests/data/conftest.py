"""Fixtures for the data tests: the real CR radiographs of ``pydicom-data`` and synthetic DICOM writers."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

RG_NAMES = tuple(f"{case}_{enc}.dcm" for case in ("RG1", "RG3") for enc in ("UNCI", "UNCR", "J2KI", "J2KR"))
"""Chest PA (RG1) and distal tibia AP (RG3) CR, each uncompressed (I/R) and JPEG 2000 lossy / lossless."""


def _rg_path(name: str) -> Path:
    from pydicom.data import get_testdata_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns that it cannot reach its download mirror
        path = get_testdata_file(name)
    if path is None:
        raise FileNotFoundError(f"{name} not found: install the test extra (pydicom-data)")
    return Path(path)


@pytest.fixture(scope="session")
def rg_files() -> dict[str, Path]:
    return {name: _rg_path(name) for name in RG_NAMES}


def _make_dataset(
    pixels: np.ndarray,
    *,
    bits_allocated: int = 16,
    bits_stored: int | None = None,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    modality: str = "DX",
    **tags: Any,
):
    """A minimal single-frame DX dataset holding ``pixels`` ([H, W] or [H, W, 3]) natively."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored or bits_allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(signed)
    dtype = {8: np.int8 if signed else np.uint8, 16: np.int16 if signed else np.uint16}[bits_allocated]
    ds.PixelData = np.ascontiguousarray(pixels).astype(dtype).tobytes()
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return ds


@pytest.fixture
def write_dicom(tmp_path: Path) -> Callable[..., Path]:
    """``write_dicom(pixels, name="x.dcm", **make_dataset_kwargs) -> path`` (Part 10 file in tmp_path)."""

    def write(pixels: np.ndarray, name: str = "image.dcm", **kwargs: Any) -> Path:
        ds = _make_dataset(pixels, **kwargs)
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        return path

    return write


@pytest.fixture
def make_dataset() -> Callable[..., Any]:
    """``make_dataset(pixels, bits_allocated=16, bits_stored=None, signed=False, photometric=...,
    modality="DX", **tags) -> pydicom.Dataset`` (not written; for tests that edit before saving)."""
    return _make_dataset
