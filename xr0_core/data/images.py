"""Read any site image (DICOM, PNG, JPEG) by its content, not its name.

Hospitals export DICOMs without a suffix, with UID-like names (``1.2.840.113619.2.55.3.12``) or with
a ``.png`` suffix that lies; a text file may be called ``.dcm``. So :func:`read_image` looks at the
bytes: the ``DICM`` marker at offset 128, a bare DICOM dataset starting with a group 0002 / 0008 tag,
the PNG signature or the JPEG SOI marker. Everything else is :class:`UnusableImage`.

PNG / JPEG decisions (documented because they change what the model sees):

- 8-bit gray is taken as display-ready and scaled by 1/255;
- 16-bit gray (``I;16`` PNGs) is stretched from its own min to its max: exports of 10-14 bit detector
  data rarely fill 16 bits, and dividing by 65535 would give a near-black image;
- RGB / palette / LA / RGBA are accepted only when gray in content (see
  :func:`xr0_core.data.dicom.gray_from_rgb`); alpha is dropped;
- they carry no metadata: anatomy, view and spacing are ``None`` unless the manifest says otherwise;
- the pixels are assumed bone-white (MONOCHROME2): a PNG has no photometric tag to say otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from xr0_core.data.dicom import (
    META_KEYS,
    MIN_SIDE,
    LoadedImage,
    UnusableImage,
    check_header,
    gray_from_rgb,
    read_dicom,
    read_dicom_header,
)

IMAGE_SUFFIXES: frozenset[str] = frozenset({".dcm", ".dicom", ".png", ".jpg", ".jpeg", ""})
"""Suffixes of files a folder walk considers (lower-cased); see :func:`is_candidate` for UID names."""

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# First tag of a bare (preamble-less) dataset: group 0002 (file meta) or 0008 (identifying module),
# little- or big-endian.
_BARE_DICOM_STARTS = (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")


def is_candidate(path: str | os.PathLike) -> bool:
    """Whether a folder walk should try this file: a known suffix, or a UID-style numeric suffix.

    ``Path("1.2.840.113619.2.55.3.12").suffix`` is ``".12"``; such names are how PACS exports
    name DICOMs, so an all-digit suffix counts as no suffix.
    """
    suffix = Path(path).suffix.lower()
    return suffix in IMAGE_SUFFIXES or suffix[1:].isdigit()


def sniff(path: str | os.PathLike) -> str:
    """``"dicom"``, ``"dicom-bare"``, ``"png"``, ``"jpeg"`` or ``"unknown"`` from the first bytes.

    Raises
    ------
    UnusableImage
        The file cannot be opened, or is empty.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except FileNotFoundError:
        raise UnusableImage("file not found") from None
    except OSError as exc:
        raise UnusableImage(f"unreadable file: {exc.strerror or exc}") from None
    if not head:
        raise UnusableImage("empty file (0 bytes)")
    if len(head) == 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    if head[:2] in _BARE_DICOM_STARTS:
        return "dicom-bare"
    return "unknown"


_NOT_AN_IMAGE = "not DICOM, PNG or JPEG: no 'DICM' marker at byte 128 and no image signature"


def read_image(path: str | os.PathLike) -> LoadedImage:
    """Decode one image file, whatever its name, into display-ready pixels.

    Parameters
    ----------
    path : path-like
        DICOM (with or without preamble), PNG (8 / 16 bit, gray / RGB / palette) or JPEG.

    Returns
    -------
    LoadedImage
        ``pixels`` float32 ``[H, W]`` in ``[0, 1]``, bone bright; ``meta`` the whitelist
        (:data:`xr0_core.data.dicom.META_KEYS`).

    Raises
    ------
    UnusableImage
        With a one-line reason.
    """
    kind = sniff(path)
    if kind == "dicom":
        return read_dicom(path)
    if kind == "dicom-bare":
        try:
            return read_dicom(path, force=True)
        except UnusableImage as exc:
            if exc.reason.startswith(("not DICOM", "unreadable DICOM")):
                raise UnusableImage(_NOT_AN_IMAGE) from None
            raise
    if kind in ("png", "jpeg"):
        return _read_pil(path, kind)
    raise UnusableImage(_NOT_AN_IMAGE)


def read_image_header(path: str | os.PathLike) -> dict[str, Any]:
    """What the header alone says, without decoding pixels (fast screening of a site).

    Returns
    -------
    dict
        :data:`~xr0_core.data.dicom.META_KEYS` (``rows`` / ``columns`` filled).

    Raises
    ------
    UnusableImage
        When the header already shows the file is unusable (not an image, multi-frame, tiny,
        wrong modality, palette colour, no decoder, DICOM pixel data missing or shorter than
        declared). A corrupt compressed stream or a truncated PNG / JPEG is only found by decoding.
    """
    kind = sniff(path)
    if kind in ("dicom", "dicom-bare"):
        try:
            meta = read_dicom_header(path, force=kind == "dicom-bare")
        except UnusableImage as exc:
            if kind == "dicom-bare" and exc.reason.startswith(("not DICOM", "unreadable DICOM")):
                raise UnusableImage(_NOT_AN_IMAGE) from None
            raise
        check_header(meta)
        return {k: meta[k] for k in META_KEYS}
    if kind in ("png", "jpeg"):
        from PIL import Image

        try:
            with Image.open(path) as img:
                width, height = img.size
                mode = img.mode
        except Exception as exc:
            raise UnusableImage(f"unreadable {kind.upper()}: {exc}") from None
        if min(width, height) < MIN_SIDE:
            raise UnusableImage(f"image too small ({height}x{width}); a radiograph needs at least {MIN_SIDE} px a side")
        return _pil_meta(kind, height, width, 16 if mode.startswith("I") else 8)
    raise UnusableImage(_NOT_AN_IMAGE)


def _pil_meta(kind: str, rows: int, columns: int, bits: int) -> dict[str, Any]:
    meta: dict[str, Any] = dict.fromkeys(META_KEYS)
    meta.update(photometric="MONOCHROME2", bits_stored=bits, rows=rows, columns=columns, source=kind)
    return meta


def _read_pil(path: str | os.PathLike, kind: str) -> LoadedImage:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later in a data loader
            if kind == "jpeg":
                img = ImageOps.exif_transpose(img)
            mode = img.mode
            if mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
                img = img.convert("RGB") if mode != "1" else img.convert("L")
            array = np.asarray(img)
            mode = img.mode
    except Image.DecompressionBombError as exc:
        raise UnusableImage(f"{kind.upper()} too large: {exc}") from None
    except Exception as exc:  # OSError "image file is truncated", SyntaxError for a broken PNG, ...
        message = " ".join(str(exc).split())
        prefix = "truncated" if "truncat" in message.lower() else "unreadable"
        raise UnusableImage(f"{prefix} {kind.upper()}: {message}") from None

    if array.ndim == 3:
        channels = array[..., :3] if array.shape[-1] >= 3 else array[..., :1]  # drop alpha
        scale = 65535.0 if array.dtype == np.uint16 else 255.0
        if channels.shape[-1] == 1:
            pixels = channels[..., 0].astype(np.float32) / np.float32(scale)
        else:
            pixels = gray_from_rgb(channels.astype(np.float32) / np.float32(scale), what=f"{mode} {kind.upper()}")
        bits = 16 if array.dtype == np.uint16 else 8
    elif array.dtype == np.uint8 or array.dtype == bool:
        pixels = array.astype(np.float32) / np.float32(255.0 if array.dtype == np.uint8 else 1.0)
        bits = 8
    else:
        # I;16 / I / F: stretch the actual data range (see the module docstring).
        values = array.astype(np.float32)
        if not np.isfinite(values).all():
            raise UnusableImage(f"non-finite pixel values in {kind.upper()}")
        lo, hi = float(values.min()), float(values.max())
        if hi <= lo:
            raise UnusableImage(f"all pixels have the same value ({lo:g}): blank image")
        pixels = (values - np.float32(lo)) / np.float32(hi - lo)
        bits = 16
    height, width = pixels.shape
    if min(height, width) < MIN_SIDE:
        raise UnusableImage(f"image too small ({height}x{width}); a radiograph needs at least {MIN_SIDE} px a side")
    if float(pixels.min()) == float(pixels.max()):
        raise UnusableImage(f"all pixels have the same value ({float(pixels.min()):g}): blank image")
    return LoadedImage(
        pixels=np.ascontiguousarray(np.clip(pixels, 0.0, 1.0), dtype=np.float32),
        meta=_pil_meta(kind, height, width, bits),
    )
