"""Write a phantom as a real DICOM file, encoded the way one hospital's scanner would.

A site's ``scanner`` tendencies (see :func:`xr0_core.data.synthetic.sites.make_site_specs`) drive
per-image choices: photometric (MONOCHROME1 stores bone dark, MONOCHROME2 bright), bits stored
(8 / 12 / 16, 16-bit sometimes signed), a Modality LUT (rescale slope / intercept) or not, a VOI
window or none (readers then fall back to a percentile window), PixelSpacing vs ImagerPixelSpacing,
and the transfer syntax: Explicit / Implicit VR Little Endian, Deflated, RLE Lossless, JPEG 2000
Lossless. Every file is CR or DX "For Presentation", with fake patient ids, no names, and UIDs
derived from the seed so the same seed gives the same bytes.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping

import numpy as np

TRANSFER_SYNTAXES: tuple[str, ...] = (
    "ExplicitVRLittleEndian",
    "ImplicitVRLittleEndian",
    "DeflatedExplicitVRLittleEndian",
    "RLELossless",
    "JPEG2000Lossless",
)
"""pydicom UID keywords of the encodings a synthetic site may use (those that round-trip losslessly)."""

BODY_PART_EXAMINED = {
    "chest": "CHEST", "hand": "HAND", "knee": "KNEE", "spine": "LSPINE", "pelvis": "PELVIS", "skull": "SKULL",
}
# DICOM ViewPosition defined terms: lateral views are written LL (left lateral); the manifest says LAT.
_VIEW_POSITION = {"PA": "PA", "AP": "AP", "LAT": "LL"}


@dataclass(frozen=True)
class Encoding:
    """How one image is stored (drawn per image from the site's scanner tendencies)."""

    transfer_syntax: str
    photometric: str
    bits_stored: int
    signed: bool
    rescale: tuple[float, float] | None  # (slope, intercept)
    window: bool
    modality: str
    spacing_tags: str  # "PixelSpacing" | "ImagerPixelSpacing" | "both"
    stored_range: tuple[int, int]


@dataclass(frozen=True)
class DicomIdentity:
    """The identifying attributes of one instance (all synthetic)."""

    patient_id: str
    study_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    instance_number: int
    series_number: int
    study_date: str
    institution: str
    manufacturer: str
    patient_sex: str


@lru_cache(maxsize=None)
def available_transfer_syntaxes() -> tuple[str, ...]:
    """The entries of :data:`TRANSFER_SYNTAXES` this environment can encode (compressed ones need plugins)."""
    from pydicom import uid as uids
    from pydicom.pixels import get_encoder

    out = []
    for keyword in TRANSFER_SYNTAXES:
        uid = getattr(uids, keyword)
        if uid.is_compressed:
            try:
                if not get_encoder(uid).is_available:
                    continue
            except NotImplementedError:
                continue
        out.append(keyword)
    return tuple(out)


def choose_encoding(scanner: Mapping, rng: np.random.Generator) -> Encoding:
    """Draw one image's encoding from a site's ``scanner`` tendencies.

    Parameters
    ----------
    scanner : mapping
        Keys: ``modality``, ``p_monochrome1``, ``bits_stored`` ({"8"|"12"|"16": weight}),
        ``p_signed``, ``p_rescale``, ``p_window``, ``transfer_syntaxes`` ({keyword: weight}),
        ``spacing_tags``.
    rng : numpy.random.Generator
    """
    syntaxes = [k for k in scanner["transfer_syntaxes"] if k in available_transfer_syntaxes()]
    if not syntaxes:
        syntaxes = ["ExplicitVRLittleEndian"]
    weights = np.array([scanner["transfer_syntaxes"][k] for k in syntaxes], dtype=float)
    syntax = syntaxes[int(rng.choice(len(syntaxes), p=weights / weights.sum()))]
    bit_names = sorted(scanner["bits_stored"], key=int)
    bit_weights = np.array([scanner["bits_stored"][b] for b in bit_names], dtype=float)
    bits = int(bit_names[int(rng.choice(len(bit_names), p=bit_weights / bit_weights.sum()))])
    photometric = "MONOCHROME1" if rng.random() < scanner["p_monochrome1"] else "MONOCHROME2"
    signed = bits == 16 and rng.random() < scanner["p_signed"]
    if bits == 8:
        stored_range = (0, 255)
    elif bits == 12:
        stored_range = (int(rng.integers(0, 200)), int(rng.integers(3000, 4096)))
    elif signed:
        stored_range = (int(rng.integers(-2048, -500)), int(rng.integers(12000, 32768)))
    else:
        stored_range = (int(rng.integers(0, 1000)), int(rng.integers(16000, 65536)))
    rescale = None
    if rng.random() < scanner["p_rescale"]:
        rescale = (float(rng.choice([0.5, 1.0, 2.0])), float(rng.choice([-1024.0, 0.0, 100.0])))
    return Encoding(
        transfer_syntax=syntax,
        photometric=photometric,
        bits_stored=bits,
        signed=signed,
        rescale=rescale,
        window=bool(rng.random() < scanner["p_window"]),
        modality=scanner["modality"],
        spacing_tags=scanner["spacing_tags"],
        stored_range=stored_range,
    )


def stored_values(image: np.ndarray, enc: Encoding) -> np.ndarray:
    """Display image (float ``[0, 1]``, bright = dense) -> stored integers as ``enc`` prescribes.

    MONOCHROME1 stores dense tissue as *low* values, so a reader that forgets to invert shows a
    negative; that is exactly the trap real CR archives set.
    """
    lo, hi = enc.stored_range
    level = image if enc.photometric == "MONOCHROME2" else 1.0 - image
    values = np.rint(lo + level.astype(np.float64) * (hi - lo))
    dtype = np.uint8 if enc.bits_stored == 8 else (np.int16 if enc.signed else np.uint16)
    return values.astype(dtype)


def write_dicom(path: Path, image: np.ndarray, enc: Encoding, ident: DicomIdentity, *, anatomy: str, view: str,
                laterality: str | None, spacing_mm: float) -> None:
    """Write one single-frame radiograph.

    Parameters
    ----------
    path : Path
        Destination ``.dcm`` (parent must exist).
    image : np.ndarray
        float32 ``[H, W]`` in ``[0, 1]``, bright = dense.
    enc : Encoding
    ident : DicomIdentity
    anatomy, view : str
        Manifest anatomy and view (``LAT`` is written as ViewPosition ``LL``).
    laterality : {"L", "R"} or None
    spacing_mm : float
    """
    from pydicom import uid as uids
    from pydicom.dataset import Dataset, FileMetaDataset

    sop_class = (uids.ComputedRadiographyImageStorage if enc.modality == "CR"
                 else uids.DigitalXRayImageStorageForPresentation)
    syntax = getattr(uids, enc.transfer_syntax)
    pixels = stored_values(image, enc)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ident.sop_uid
    meta.TransferSyntaxUID = uids.ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ident.sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ident.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = enc.modality
    ds.Manufacturer = ident.manufacturer
    ds.InstitutionName = ident.institution
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = f"XR {anatomy.upper()} {view}"
    ds.SeriesDescription = f"{anatomy.upper()} {view}"
    # Synthetic, non-identifying: the patient "name" is the fake id.
    ds.PatientName = ident.patient_id
    ds.PatientID = ident.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ident.patient_sex
    ds.BodyPartExamined = BODY_PART_EXAMINED[anatomy]
    ds.ViewPosition = _VIEW_POSITION[view]
    if laterality:
        ds.ImageLaterality = laterality
    ds.StudyInstanceUID = ident.study_uid
    ds.SeriesInstanceUID = ident.series_uid
    ds.StudyID = ident.study_id[-16:]
    ds.SeriesNumber = ident.series_number
    ds.InstanceNumber = ident.instance_number
    ds.PatientOrientation = ""
    if enc.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1 if enc.photometric == "MONOCHROME2" else -1
    ds.BurnedInAnnotation = "NO"
    spacing = [f"{spacing_mm:.4f}", f"{spacing_mm:.4f}"]
    if enc.spacing_tags in ("PixelSpacing", "both"):
        ds.PixelSpacing = spacing
    if enc.spacing_tags in ("ImagerPixelSpacing", "both"):
        ds.ImagerPixelSpacing = spacing

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = enc.photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 8 if enc.bits_stored == 8 else 16
    ds.BitsStored = enc.bits_stored
    ds.HighBit = enc.bits_stored - 1
    ds.PixelRepresentation = int(enc.signed)
    if enc.rescale is not None:
        ds.RescaleSlope = _ds(enc.rescale[0])
        ds.RescaleIntercept = _ds(enc.rescale[1])
        ds.RescaleType = "US"
    if enc.window:
        out = pixels.astype(np.float64)
        if enc.rescale is not None:
            out = out * enc.rescale[0] + enc.rescale[1]
        lo, hi = np.percentile(out, (0.5, 99.5))
        if hi <= lo:
            lo, hi = float(out.min()), float(out.max()) + 1.0
        ds.WindowCenter = _ds((lo + hi) / 2)
        ds.WindowWidth = _ds(max(hi - lo, 2.0))
    ds.PixelData = pixels.tobytes()

    if syntax.is_compressed:
        # pydicom gives compressed copies a new SOP Instance UID unless told otherwise; ours is seeded.
        ds.compress(syntax, pixels, generate_instance_uid=False)
    else:
        meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)


def dicom_date(rng: np.random.Generator) -> str:
    """A study date in 2019-2024 (synthetic; no real acquisition behind it)."""
    day = _dt.date(2019, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 6 * 365)))
    return day.strftime("%Y%m%d")


def _ds(value: float) -> str:
    """A DS string (at most 16 characters)."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return text[:16] or "0"
