"""Read one radiograph DICOM into display-ready float pixels plus a whitelisted metadata dict.

The pixel pipeline is the one a radiology viewer applies (PS3.3 C.11, PS3.4 N.2), so the network sees
what the radiologist sees, bone white, whatever the vendor wrote:

1. decode the stored values once (``ds.pixel_array``; compressed transfer syntaxes go through
   pydicom's pixel decoders: pylibjpeg-libjpeg, pylibjpeg-openjpeg, pylibjpeg-rle, or pillow);
2. Modality LUT: ``RescaleSlope`` / ``RescaleIntercept`` or a Modality LUT Sequence
   (:func:`pydicom.pixels.apply_modality_lut`);
3. VOI: the first VOI LUT (:func:`pydicom.pixels.apply_voi`), else the first Window Center / Width
   (LINEAR, LINEAR_EXACT or SIGMOID, PS3.3 C.11.2.1.2), else a robust 0.5 / 99.5 percentile window.
   A window that leaves (almost) no pixel inside it is a wrong window copied from somewhere else, and
   is replaced by the percentile window rather than producing a black or white image;
4. MONOCHROME1 (or a Presentation LUT Shape of INVERSE) is inverted, once;
5. Pixel Padding Value pixels (no image there) become 0.

A file that cannot give a trustworthy image raises :class:`UnusableImage` with a one-line reason; a
site skips it and lists the reason in its report. Only a whitelist of metadata survives (MONAI's
habit): nothing that identifies a patient, an institution or a date ever leaves this module.

References: DICOM PS3.3 C.7.6.3 (Image Pixel), C.11.1 (Modality LUT), C.11.2 (VOI LUT),
C.8.11.3 (DX Presentation LUT Shape); MONAI ``monai/data/image_reader.py`` (metadata whitelist).
"""

from __future__ import annotations

import os
import re
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MIN_SIDE = 32
"""Images with a side shorter than this are icons, thumbnails or localisers, not radiographs."""

ACCEPTED_MODALITIES = frozenset({"CR", "DX", "DR", "RG", "MG", "IO", "PX", "XA", "RF", "OT", "SC", "DF"})
"""Projection X-ray modalities (plus OT / SC, which are what scanned films and exports are labelled).
CT, MR, US, NM, PT and non-image objects (SR, PR, KO, SEG, ...) are rejected: a CT slice in an X-ray
folder is a wrong image, not a radiograph. A missing Modality is accepted."""

META_KEYS = (
    "modality",
    "photometric",
    "bits_stored",
    "rows",
    "columns",
    "pixel_spacing_mm",
    "view",
    "body_part",
    "anatomy",
    "transfer_syntax",
    "source",
)
"""The metadata whitelist: every :class:`LoadedImage` ``meta`` has exactly these keys."""

# Free-text tags consulted (never kept) to recognise the anatomy when BodyPartExamined is missing or
# generic (e.g. "EXTREMITY" with StudyDescription "distal tibia").
_ANATOMY_TEXT_TAGS = (
    "StudyDescription",
    "SeriesDescription",
    "ProtocolName",
    "AcquisitionDeviceProcessingDescription",
)

# Fraction of pixels that must fall strictly inside a window for the window to be trusted.
_MIN_INSIDE_WINDOW = 0.005
# Percentiles of the robust window used when a file has no usable VOI.
_ROBUST_PERCENTILES = (0.5, 99.5)
# A colour image counts as gray when at most this fraction of pixels has a channel spread above
# _CHROMA_TOL (of full scale): JPEG chroma noise and a small coloured burnt-in marker pass,
# a photo, a colour-mapped screenshot or a dose report does not.
_CHROMA_TOL = 0.08
_MAX_COLOURED_FRACTION = 0.01


class UnusableImage(Exception):
    """A file that must not be trained on; ``reason`` is one human-readable line."""

    def __init__(self, reason: str):
        self.reason = " ".join(str(reason).split())[:300]
        super().__init__(self.reason)


@dataclass(frozen=True)
class LoadedImage:
    """One decoded radiograph.

    Attributes
    ----------
    pixels : np.ndarray
        ``float32 [H, W]`` in ``[0, 1]``; bright = dense (bone white) whatever the photometric.
    meta : dict[str, Any]
        Exactly the :data:`META_KEYS` whitelist (missing values are ``None``).
    """

    pixels: np.ndarray
    meta: dict[str, Any]


# ---------------------------------------------------------------------------------------------- anatomy

# Priority order matters: the first anatomy whose keywords occur wins, so specific joints come before
# the long bones and regions that contain them ("HAND WRIST" -> hand, "PELVIS HIP" -> pelvis,
# "KNEE" before "LEG"). Keywords are whole words of the upper-cased, accent-stripped text; several
# languages seen in European / Latin American PACS are included.
_ANATOMY_KEYWORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("hand", ("HAND", "HANDS", "FINGER", "FINGERS", "THUMB", "MANO", "MAIN", "BONE AGE", "FINGER")),
    ("wrist", ("WRIST", "CARPAL", "CARPUS", "SCAPHOID", "HANDGELENK", "POIGNET", "MUNECA")),
    ("foot", ("FOOT", "FEET", "TOE", "TOES", "HEEL", "CALCANEUS", "FUSS", "FUSSE", "PIED", "PIE")),
    ("ankle", ("ANKLE", "SPRUNGGELENK", "OSG", "CHEVILLE", "TOBILLO")),
    ("knee", ("KNEE", "KNEES", "PATELLA", "KNIE", "GENOU", "RODILLA")),
    ("elbow", ("ELBOW", "ELLENBOGEN", "COUDE", "CODO")),
    ("shoulder", ("SHOULDER", "SCAPULA", "CLAVICLE", "HUMERUS HEAD", "SCHULTER", "EPAULE", "HOMBRO")),
    (
        "spine",
        (
            "SPINE", "CSPINE", "TSPINE", "LSPINE", "SSPINE", "SPINAL", "LUMBAR", "CERVICAL", "SACRUM",
            "COCCYX", "VERTEBRA", "VERTEBRAE", "SCOLIOSIS", "LWS", "HWS", "BWS", "WIRBELSAEULE",
            "RACHIS", "COLUMNA", "L SPINE", "C SPINE", "T SPINE",
        ),
    ),
    ("pelvis", ("PELVIS", "BECKEN", "BASSIN", "PELVIS AP", "SI JOINT", "SIJ")),
    ("hip", ("HIP", "HIPS", "HUEFTE", "HANCHE", "CADERA", "FEMORAL NECK")),
    (
        "skull",
        (
            "SKULL", "HEAD", "CRANIUM", "SINUS", "SINUSES", "FACE", "FACIAL", "MANDIBLE", "JAW",
            "ORBIT", "ORBITS", "NASAL", "SCHAEDEL", "CRANE", "CRANEO", "CRANIO", "DENTAL", "TEETH",
        ),
    ),
    (
        "chest",
        (
            "CHEST", "THORAX", "LUNG", "LUNGS", "CXR", "RIB", "RIBS", "STERNUM", "TORAX", "POUMON",
            "PULMON", "HEART", "THORAKS",
        ),
    ),
    ("abdomen", ("ABDOMEN", "ABDOMINAL", "ABD", "KUB", "BAUCH", "ABDOMEN AP")),
    ("leg", ("LEG", "LOWER LEG", "TIBIA", "FIBULA", "FEMUR", "UNTERSCHENKEL", "OBERSCHENKEL", "JAMBE")),
    (
        "other",
        (
            "EXTREMITY", "ARM", "FOREARM", "HUMERUS", "UPPER ARM", "NECK", "SOFT TISSUE", "WHOLEBODY",
            "WHOLE BODY", "BREAST", "UNTERARM", "OBERARM",
        ),
    ),
)
_ANATOMY_PATTERNS = tuple(
    (name, re.compile(r"\b(?:" + "|".join(re.escape(k) for k in sorted(set(keys), key=len, reverse=True)) + r")\b"))
    for name, keys in _ANATOMY_KEYWORDS
)
ANATOMY_VOCABULARY = tuple(name for name, _ in _ANATOMY_KEYWORDS)


def _clean_text(text: str) -> str:
    """Upper-case, umlauts spelled out, accents stripped, anything not alphanumeric a space."""
    text = text.upper().replace("Ä", "AE").replace("Ö", "OE").replace("Ü", "UE").replace("ß", "SS")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    # "L-SPINE", "L_SPINE" and "L SPINE" are one word for matching purposes.
    return " ".join(re.sub(r"[^A-Z0-9]+", " ", text).split())


def _match_anatomy(text: str | None) -> str | None:
    if not text or not str(text).strip():
        return None
    cleaned = _clean_text(str(text))
    for name, pattern in _ANATOMY_PATTERNS:
        if pattern.search(cleaned):
            return name
    return None


def normalise_anatomy(body_part: str | None, extra: str | None = None) -> str | None:
    """Map DICOM body-part / description strings to the small anatomy vocabulary.

    Parameters
    ----------
    body_part : str or None
        ``BodyPartExamined`` or a manifest ``anatomy`` cell ("CHEST", "L SPINE", "Knee", "chest").
    extra : str or None
        Free text consulted when ``body_part`` is missing or generic ("EXTREMITY"): study / series
        description, protocol name.

    Returns
    -------
    str or None
        One of :data:`ANATOMY_VOCABULARY` (chest, hand, knee, spine, pelvis, skull, leg, foot,
        shoulder, elbow, wrist, hip, ankle, abdomen, other), or ``None`` when nothing is recognised.
    """
    first = _match_anatomy(body_part)
    if first is not None and first != "other":
        return first
    second = _match_anatomy(extra)
    if second is not None and second != "other":
        return second
    return "other" if "other" in (first, second) else None


# ------------------------------------------------------------------------------------------- metadata


def _text(ds: Any, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def _int(ds: Any, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _spacing(ds: Any) -> tuple[float, float] | None:
    """(row, column) spacing in mm: PixelSpacing, else ImagerPixelSpacing (CR / DX); zeros are None."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            value = ds.get(keyword)
            if value is None or len(value) != 2:
                continue
            row, col = float(value[0]), float(value[1])
        except (TypeError, ValueError):
            continue
        # Some CR writers put 0\0 (RG1 does): unknown, not zero-sized pixels.
        if np.isfinite(row) and np.isfinite(col) and row > 0 and col > 0:
            return (row, col)
    return None


def _transfer_syntax(ds: Any) -> Any:
    """The transfer syntax UID, inferred from how the dataset was read when there is no file meta."""
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, UID

    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid:
        return UID(str(uid))
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit:
        return ImplicitVRLittleEndian
    if little is False:
        return ExplicitVRBigEndian
    return ExplicitVRLittleEndian


def _meta(ds: Any) -> dict[str, Any]:
    body_part = _text(ds, "BodyPartExamined")
    extra = " ".join(t for t in (_text(ds, k) for k in _ANATOMY_TEXT_TAGS) if t)
    view = _text(ds, "ViewPosition")
    uid = _transfer_syntax(ds)
    return {
        "modality": (_text(ds, "Modality") or "").upper() or None,
        "photometric": (_text(ds, "PhotometricInterpretation") or "").upper() or None,
        "bits_stored": _int(ds, "BitsStored"),
        "rows": _int(ds, "Rows"),
        "columns": _int(ds, "Columns"),
        "pixel_spacing_mm": _spacing(ds),
        "view": view.upper() if view else None,
        "body_part": body_part.upper() if body_part else None,
        "anatomy": normalise_anatomy(body_part, extra or None),
        "transfer_syntax": str(uid) if uid else None,
        "source": "dicom",
    }


# ---------------------------------------------------------------------------------------------- reading


def _dcmread(path: Any, *, stop_before_pixels: bool, force: bool) -> tuple[Any, bool]:
    """``pydicom.dcmread`` with its warnings silenced (real archives warn on every file) and every
    failure turned into :class:`UnusableImage`. A file cut inside encapsulated pixel data is read by
    pydicom without its Pixel Data and only a warning: that warning is what tells us it was truncated."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            source = path if hasattr(path, "read") else os.fspath(path)
            ds = pydicom.dcmread(source, stop_before_pixels=stop_before_pixels, force=force)
        except InvalidDicomError:
            raise UnusableImage("not DICOM: no 'DICM' marker at byte 128 and no DICOM file meta") from None
        except (OSError, EOFError) as exc:
            raise UnusableImage(f"unreadable file: {exc}") from None
        except Exception as exc:  # struct.error, ValueError, ...: the bytes are not a readable dataset
            raise UnusableImage(f"unreadable DICOM (truncated or corrupt): {type(exc).__name__}: {exc}") from None
    truncated = any("end of file" in str(w.message).lower() for w in caught)
    if len(ds) == 0 and not getattr(ds, "file_meta", None):
        raise UnusableImage("not DICOM: no data elements could be read")
    return ds, truncated


def read_dicom_header(path: str | os.PathLike, *, force: bool = False) -> dict[str, Any]:
    """Whitelisted metadata only, reading up to (not including) the pixel data (fast indexing).

    Parameters
    ----------
    path : path-like
        A DICOM file (Part 10, or a bare dataset with ``force=True``).
    force : bool
        Read a dataset that lacks the 128-byte preamble and ``DICM`` marker.

    Returns
    -------
    dict
        :data:`META_KEYS` plus ``frames`` (NumberOfFrames, 1 when absent), ``samples_per_pixel`` and
        ``pixel_data``: ``"present"``, ``"missing"`` or ``"truncated"`` (the Pixel Data element's
        declared length runs past the end of the file, or its encapsulated fragments never end).

    Raises
    ------
    UnusableImage
        When the file is not a readable DICOM.
    """
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise UnusableImage(f"unreadable file: {exc.strerror or exc}") from None
    with fh:
        ds, _ = _dcmread(fh, stop_before_pixels=True, force=force)
        # pydicom stops with the file positioned at the Pixel Data tag: its length is checkable
        # against the file size without reading the (large) value.
        pixel_data = _pixel_data_status(fh, ds, os.fstat(fh.fileno()).st_size)
    meta = _meta(ds)
    meta["frames"] = _int(ds, "NumberOfFrames") or 1
    meta["samples_per_pixel"] = _int(ds, "SamplesPerPixel") or 1
    meta["pixel_data"] = pixel_data
    return meta


def dicom_patient_key(path: str | os.PathLike) -> str | None:
    """A site-local pseudonym of the file's PatientID (``dicom-`` + 16 hex of its SHA-256), or None.

    Used only to group a patient's images into one privacy unit (D3) when no manifest names patients.
    PatientID itself is identifying and never kept: it is outside the metadata whitelist, and the
    pseudonym stays at the site like every other record field.
    """
    import hashlib

    import pydicom

    try:
        ds = pydicom.dcmread(os.fspath(path), stop_before_pixels=True, specific_tags=["PatientID"], force=True)
    except Exception:  # noqa: BLE001 -- unreadable files are reported by the probe itself
        return None
    pid = str(getattr(ds, "PatientID", "") or "").strip()
    return "dicom-" + hashlib.sha256(pid.encode()).hexdigest()[:16] if pid else None


_PIXEL_TAGS_LE = (b"\xe0\x7f\x10\x00", b"\xe0\x7f\x08\x00", b"\xe0\x7f\x09\x00")
_PIXEL_TAGS_BE = (b"\x7f\xe0\x00\x10", b"\x7f\xe0\x00\x08", b"\x7f\xe0\x00\x09")
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0"
_TAIL_BYTES = 1 << 20


def _pixel_data_status(fh: Any, ds: Any, size: int) -> str:
    """``present`` / ``missing`` / ``truncated`` for the element at the current file position."""
    if getattr(_transfer_syntax(ds), "is_deflated", False):
        return "present"  # the file position is in the deflated stream: decoding will tell
    start = fh.tell()
    head = fh.read(12)
    implicit, little = getattr(ds, "original_encoding", (False, True))
    little = little is not False
    if len(head) < 8 or head[:4] not in (_PIXEL_TAGS_LE if little else _PIXEL_TAGS_BE):
        return "missing"
    if implicit:
        length, header = int.from_bytes(head[4:8], "little" if little else "big"), 8
    elif len(head) < 12:
        return "truncated"
    else:
        length, header = int.from_bytes(head[8:12], "little" if little else "big"), 12
    if length != 0xFFFFFFFF:
        return "present" if start + header + length <= size else "truncated"
    # Encapsulated: the fragments end with a Sequence Delimitation Item near the end of the file.
    fh.seek(max(start + header, size - _TAIL_BYTES))
    return "present" if _SEQUENCE_DELIMITER in fh.read() else "truncated"


def check_header(meta: dict[str, Any]) -> None:
    """Reject what the header alone shows is not a single usable radiograph.

    Parameters
    ----------
    meta : dict
        The output of :func:`read_dicom_header`.

    Raises
    ------
    UnusableImage
        Wrong modality, multi-frame, tiny, palette / unknown photometric, missing or truncated
        pixel data (when ``meta`` has ``pixel_data``), or no decoder installed.
    """
    if meta.get("pixel_data") == "missing":
        raise UnusableImage("no pixel data")
    if meta.get("pixel_data") == "truncated":
        raise UnusableImage("truncated pixel data: the file ends inside the Pixel Data element")
    modality = meta.get("modality")
    if modality and modality not in ACCEPTED_MODALITIES:
        raise UnusableImage(
            f"modality {modality} is not a projection radiograph (accepted: {', '.join(sorted(ACCEPTED_MODALITIES))})"
        )
    if meta.get("frames", 1) > 1:
        raise UnusableImage(f"multi-frame image ({meta['frames']} frames): only single radiographs are used")
    rows, cols = meta.get("rows"), meta.get("columns")
    if rows is None or cols is None:
        raise UnusableImage("no image: Rows / Columns missing (not an image object)")
    if min(rows, cols) < MIN_SIDE:
        raise UnusableImage(f"image too small ({rows}x{cols}); a radiograph needs at least {MIN_SIDE} px a side")
    photometric = meta.get("photometric")
    if photometric == "PALETTE COLOR":
        raise UnusableImage("PALETTE COLOR image: a colour-mapped picture, not a radiograph")
    if photometric is not None and not (
        photometric in ("MONOCHROME1", "MONOCHROME2", "RGB") or photometric.startswith("YBR")
    ):
        raise UnusableImage(f"unsupported photometric interpretation {photometric}")
    _check_decoder(meta.get("transfer_syntax"))


def _check_decoder(transfer_syntax: str | None) -> None:
    if not transfer_syntax:
        return
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uid = UID(transfer_syntax)
    if not uid.is_compressed:
        return
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise UnusableImage(f"no pixel decoder exists for transfer syntax {uid.name} ({uid})") from None
    if not decoder.is_available:
        plugins = "; ".join(decoder.missing_dependencies) or "a pydicom pixel decoder plugin"
        raise UnusableImage(f"no installed decoder for {uid.name} ({uid}): install one of: {plugins}")


def _has_pixel_tag(path: str | os.PathLike) -> bool:
    """Whether the raw bytes contain a Pixel Data tag (little- or big-endian)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return False
    return b"\xe0\x7f\x10\x00" in data or b"\x7f\xe0\x00\x10" in data


def read_dicom(path: str | os.PathLike, *, force: bool = False) -> LoadedImage:
    """Decode one radiograph DICOM into display-ready pixels (see the module docstring for the steps).

    Parameters
    ----------
    path : path-like
        A DICOM file.
    force : bool
        Read a dataset that lacks the 128-byte preamble and ``DICM`` marker.

    Returns
    -------
    LoadedImage
        ``pixels`` float32 ``[H, W]`` in ``[0, 1]``, bone bright; ``meta`` the whitelist.

    Raises
    ------
    UnusableImage
        Not DICOM / unreadable, truncated or missing pixel data, wrong modality, unsupported
        photometric, multi-frame, all-constant, tiny, non-finite, or no decoder for the transfer syntax.
    """
    ds, truncated = _dcmread(path, stop_before_pixels=False, force=force)
    meta = _meta(ds)
    header = dict(meta, frames=_int(ds, "NumberOfFrames") or 1)
    has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    if not has_pixels:
        if truncated or _has_pixel_tag(path):
            raise UnusableImage("truncated pixel data: the file ends inside the Pixel Data element")
        sop = ds.get("SOPClassUID")
        kind = f" ({sop.name})" if sop is not None and hasattr(sop, "name") else ""
        raise UnusableImage(f"no pixel data{kind}")
    check_header(header)
    if not getattr(ds, "file_meta", None) or "TransferSyntaxUID" not in ds.file_meta:
        # A bare dataset (read with force): pixel decoding needs the transfer syntax spelled out.
        from pydicom.dataset import FileMetaDataset

        ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = _transfer_syntax(ds)
    raw = _decode(ds, meta, truncated=truncated)
    pixels = to_display(raw, ds)
    return LoadedImage(pixels=pixels, meta=meta)


def _decode(ds: Any, meta: dict[str, Any], *, truncated: bool) -> np.ndarray:
    """``ds.pixel_array`` exactly once, with pydicom's exceptions turned into one-line reasons."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            raw = ds.pixel_array
        except MemoryError:
            raise UnusableImage("pixel data too large to decode in memory") from None
        except Exception as exc:
            message = " ".join(str(exc).split())
            low = message.lower()
            if truncated or "less than expected" in low or "truncat" in low or "end of" in low:
                raise UnusableImage(f"truncated pixel data: {message}") from None
            name = getattr(_transfer_syntax(ds), "name", meta.get("transfer_syntax"))
            raise UnusableImage(f"pixel data could not be decoded ({name}): {type(exc).__name__}: {message}") from None
    rows, cols = meta["rows"], meta["columns"]
    if raw.shape[:2] != (rows, cols):
        raise UnusableImage(f"decoded pixels are {raw.shape}, the header says {rows}x{cols}")
    return raw


# ------------------------------------------------------------------------------------------ intensities


def gray_from_rgb(rgb: np.ndarray, *, what: str = "colour image") -> np.ndarray:
    """Convert a colour image whose channels are (nearly) equal to gray; reject real colour.

    Decision: colour radiographs do not exist; an RGB file that is gray in content (a secondary
    capture, a PNG export) is kept as the channel mean, while one with real colour content (a photo,
    a colour-mapped screenshot, a dose report) is rejected rather than converted into something that
    looks like, but is not, an X-ray.

    Parameters
    ----------
    rgb : np.ndarray
        ``[H, W, 3]`` float in ``[0, 1]``.
    what : str
        Named in the rejection reason.

    Returns
    -------
    np.ndarray
        ``float32 [H, W]`` in ``[0, 1]``.
    """
    rgb = np.asarray(rgb, dtype=np.float32)
    sample = rgb[::4, ::4]  # a strided sample is plenty to measure colourfulness
    spread = sample.max(axis=-1) - sample.min(axis=-1)
    coloured = float(np.mean(spread > _CHROMA_TOL))
    if coloured > _MAX_COLOURED_FRACTION:
        raise UnusableImage(
            f"{what} has real colour content ({coloured:.0%} of pixels coloured): not a gray radiograph"
        )
    return rgb.mean(axis=-1, dtype=np.float32)


def _first_value(value: Any) -> float:
    """A DS element's first value as float (a multi-valued element is a sequence, a single one is not)."""
    if isinstance(value, (str, bytes)):
        return float(value)
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _window_params(ds: Any) -> tuple[float, float, str] | None:
    """First (center, width, function) of the VOI LUT module, or None when absent or malformed."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    try:
        # Several windows (e.g. "normal" and "bone"): the first is the vendor's default.
        center, width = _first_value(ds.WindowCenter), _first_value(ds.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return None
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    if not (np.isfinite(center) and np.isfinite(width)):
        return None
    return center, width, function


def apply_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray | None:
    """PS3.3 C.11.2.1.2 windowing with the output range scaled to ``[0, 1]``.

    Parameters
    ----------
    values : np.ndarray
        ``float32 [H, W]`` modality values.
    center, width : float
        Window Center / Window Width.
    function : str
        ``LINEAR`` (default), ``LINEAR_EXACT`` or ``SIGMOID``.

    Returns
    -------
    np.ndarray or None
        ``float32 [H, W]`` in ``[0, 1]``; None for an invalid window (width too small, unknown function).
    """
    if function == "LINEAR":
        if width <= 1:
            return None
        out = (values - (center - 0.5)) / (width - 1) + 0.5
    elif function == "LINEAR_EXACT":
        if width <= 0:
            return None
        out = (values - center) / width + 0.5
    elif function == "SIGMOID":
        if width <= 0:
            return None
        return (1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))).astype(np.float32)
    else:
        return None
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def _apply_voi_lut_sequence(values: np.ndarray, ds: Any) -> np.ndarray | None:
    """The first VOI LUT, scaled by the LUT's own output range (LUT Descriptor bit depths lie)."""
    seq = ds.get("VOILUTSequence")
    if not seq:
        return None
    item = seq[0]
    if item.get("LUTDescriptor") is None or item.get("LUTData") is None:
        return None
    from pydicom.pixels import apply_voi

    try:
        n_entries, first = int(item.LUTDescriptor[0]) or 2**16, int(item.LUTDescriptor[1])
        # The whole table, to scale by its real min / max.
        table = apply_voi(np.arange(first, first + n_entries, dtype=np.int64), ds).astype(np.float32)
        lo, hi = float(table.min()), float(table.max())
        if hi <= lo:
            return None
        index = np.clip(np.rint(values).astype(np.int64) - first, 0, n_entries - 1)
        return (table[index] - lo) / (hi - lo)
    except Exception:  # a malformed LUT falls back to the window / percentiles, never to garbage
        return None


def _robust_window(values: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Scale by the 0.5 / 99.5 percentiles of the (non-padding) pixels; min / max if those coincide."""
    sample = values[::2, ::2] if valid is None else values[::2, ::2][valid[::2, ::2]]
    if sample.size == 0:
        sample = values if valid is None else values[valid]
    lo, hi = np.percentile(sample, _ROBUST_PERCENTILES)
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
    out = (values - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def to_display(raw: np.ndarray, ds: Any) -> np.ndarray:
    """Stored values -> display values in ``[0, 1]``, bone bright (module docstring, steps 2-5).

    Parameters
    ----------
    raw : np.ndarray
        ``[H, W]`` stored values (or ``[H, W, 3]`` for RGB / YBR images, already converted to RGB).
    ds : pydicom.Dataset
        The dataset the values came from (for the LUT / window / photometric tags).

    Returns
    -------
    np.ndarray
        ``float32 [H, W]`` in ``[0, 1]``.
    """
    from pydicom.pixels import apply_modality_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if raw.ndim == 3:
        if photometric in ("MONOCHROME1", "MONOCHROME2"):
            raise UnusableImage(f"{photometric} image decoded with {raw.shape[-1]} samples per pixel")
        bits = _int(ds, "BitsStored") or 8
        rgb = raw.astype(np.float32) / np.float32(2**bits - 1)
        return np.clip(gray_from_rgb(rgb, what=f"{photometric} image"), 0.0, 1.0)
    if raw.ndim != 2:
        raise UnusableImage(f"unexpected pixel array shape {raw.shape}")

    valid = None
    padding = _int(ds, "PixelPaddingValue")
    if padding is not None:
        limit = _int(ds, "PixelPaddingRangeLimit")
        lo, hi = (padding, padding) if limit is None else (min(padding, limit), max(padding, limit))
        valid = ~((raw >= lo) & (raw <= hi))
        if not valid.any():
            raise UnusableImage("every pixel is Pixel Padding Value: no image content")

    try:
        values = apply_modality_lut(raw, ds)
    except Exception as exc:
        raise UnusableImage(f"invalid Modality LUT / rescale: {type(exc).__name__}: {exc}") from None
    values = np.asarray(values, dtype=np.float32)
    if not np.isfinite(values).all():
        raise UnusableImage("non-finite pixel values (NaN or inf) after the modality rescale")
    content = values if valid is None else values[valid]
    if float(content.min()) == float(content.max()):
        raise UnusableImage(f"all pixels have the same value ({float(content.min()):g}): blank image")

    out = _apply_voi_lut_sequence(values, ds)
    if out is None:
        window = _window_params(ds)
        out = apply_window(values, *window) if window is not None else None
    if out is not None:
        inside = (out > 0.0) & (out < 1.0)
        inside_fraction = float(inside.mean() if valid is None else inside[valid].mean())
        if inside_fraction < _MIN_INSIDE_WINDOW:
            out = None  # a window that saturates the whole image belongs to some other image
    if out is None:
        out = _robust_window(values, valid)

    presentation = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    # DX: MONOCHROME1 comes *with* Presentation LUT Shape INVERSE; both describe one inversion.
    if photometric == "MONOCHROME1" or presentation == "INVERSE":
        out = 1.0 - out
    if valid is not None:
        out[~valid] = 0.0
    return np.ascontiguousarray(out, dtype=np.float32)
