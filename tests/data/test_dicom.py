"""DICOM / PNG / JPEG decoding: real CR radiographs, the pixel pipeline per bit depth, and rejections."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from xr0_core.data.dicom import (
    META_KEYS,
    UnusableImage,
    apply_window,
    normalise_anatomy,
    read_dicom,
    read_dicom_header,
    to_display,
)
from xr0_core.data.images import IMAGE_SUFFIXES, is_candidate, read_image, read_image_header

RG_CASES = [f"{case}_{enc}.dcm" for case in ("RG1", "RG3") for enc in ("UNCI", "UNCR", "J2KI", "J2KR")]


def _region(pixels: np.ndarray, rows: tuple[float, float], cols: tuple[float, float]) -> np.ndarray:
    h, w = pixels.shape
    return pixels[int(rows[0] * h) : int(rows[1] * h), int(cols[0] * w) : int(cols[1] * w)]


# ------------------------------------------------------------------------------- real CR radiographs


@pytest.fixture(scope="module")
def decoded(rg_files) -> dict[str, object]:
    """Each pydicom-data CR file decoded once for the whole module."""
    return {name: read_dicom(path) for name, path in rg_files.items()}


@pytest.mark.parametrize("name", RG_CASES)
def test_real_cr_reads_with_bones_bright(decoded, name):
    image = decoded[name]
    pixels = image.pixels
    assert pixels.dtype == np.float32 and pixels.ndim == 2
    assert 0.0 <= pixels.min() and pixels.max() <= 1.0
    assert image.meta["photometric"] == "MONOCHROME1"  # the stored values are inverted: the hard case
    if name.startswith("RG1"):
        # Chest PA: the mediastinum / spine column in the centre is denser than the lung fields
        # lateral to it. MONOCHROME1 left un-inverted would make the centre darker than the lungs.
        rows = (0.2, 0.5)
        centre = _region(pixels, rows, (0.46, 0.54)).mean()
        lungs = np.concatenate(
            [_region(pixels, rows, (0.25, 0.33)).ravel(), _region(pixels, rows, (0.67, 0.75)).ravel()]
        ).mean()
        assert centre > lungs + 0.15, (centre, lungs)
        assert image.meta["anatomy"] == "chest" and image.meta["view"] == "PA"
        assert pixels.shape == (1955, 1841)
    else:
        # Distal tibia AP: the tibial shaft (upper centre) against the direct-exposure air beside
        # the leg. Air must be near black, bone well above it.
        bone = _region(pixels, (0.05, 0.3), (0.45, 0.5)).mean()
        air = _region(pixels, (0.05, 0.3), (0.27, 0.32)).mean()
        assert air < 0.2 and bone > air + 0.5, (bone, air)
        # BodyPartExamined is the generic EXTREMITY; the study description names the tibia.
        assert image.meta["anatomy"] == "leg" and image.meta["body_part"] == "EXTREMITY"
        assert pixels.shape == (1760, 1760)


@pytest.mark.parametrize("case", ["RG1", "RG3"])
def test_encodings_decode_to_the_same_image(decoded, case):
    reference = decoded[f"{case}_UNCR.dcm"].pixels
    lossless = decoded[f"{case}_J2KR.dcm"].pixels
    lossy = decoded[f"{case}_J2KI.dcm"].pixels
    np.testing.assert_allclose(lossless, reference, atol=1e-6)
    assert np.abs(lossy - reference).mean() < 0.02
    # UNCI is the uncompressed predecessor of the lossy copy: identical to J2KI after decoding.
    assert np.abs(decoded[f"{case}_UNCI.dcm"].pixels - lossy).mean() < 0.02


def test_metadata_is_a_whitelist(rg_files, decoded):
    meta = decoded["RG1_UNCR.dcm"].meta
    assert tuple(meta) == META_KEYS
    # RG1 stores Pixel Spacing 0\0: unknown, not zero.
    assert meta["pixel_spacing_mm"] is None
    text = repr(meta)
    for identifying in ("CompressedSamples", "9RG1", "19400305", "Philips", "Hamburg", "exam Number"):
        assert identifying not in text
    header = read_dicom_header(rg_files["RG1_J2KR.dcm"])
    assert {k: header[k] for k in META_KEYS} == {**meta, "transfer_syntax": "1.2.840.10008.1.2.4.90"}
    assert header["frames"] == 1


@pytest.mark.parametrize("name", ["RG3_UNCR.dcm", "RG1_UNCR.dcm"])
def test_monochrome1_copy_of_monochrome2_decodes_identically(rg_files, tmp_path, name):
    import pydicom

    ds = pydicom.dcmread(rg_files[name])
    stored = ds.pixel_array.astype(np.int64)
    top = 2 ** int(ds.BitsStored) - 1
    # The same picture stored the other way round: x' = top - x, and the window centre mirrored so
    # that LINEAR windowing (with its -0.5 offsets, PS3.3 C.11.2.1.2.1) maps x' exactly to 1 - y(x).
    ds.PixelData = (top - stored).astype(np.uint16).tobytes()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.WindowCenter = top - float(ds.WindowCenter) + 1
    path = tmp_path / "mono2.dcm"
    ds.save_as(path, enforce_file_format=True)
    original = read_dicom(rg_files[name]).pixels
    flipped = read_dicom(path).pixels
    np.testing.assert_allclose(flipped, original, atol=1e-5)


def test_monochrome1_synthetic_is_inverted(write_dicom):
    ramp = np.tile(np.arange(64, dtype=np.uint16) * 64, (64, 1))  # 0 .. 4032, 12-bit
    common = dict(bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    mono2 = read_dicom(write_dicom(ramp, "m2.dcm", **common)).pixels
    mono1 = read_dicom(write_dicom(ramp, "m1.dcm", photometric="MONOCHROME1", **common)).pixels
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    assert mono2[0, -1] > mono2[0, 0]  # MONOCHROME2: high stored value is bright


# ---------------------------------------------------------------------------- bit depth and windowing


def _three_levels(low: int, mid: int, high: int, shape=(64, 64)) -> np.ndarray:
    """A third of the image at each level: percentiles 0.5 / 99.5 are exactly low / high."""
    image = np.full(shape, mid, dtype=np.int64)
    image[: shape[0] // 3] = low
    image[-(shape[0] // 3) :] = high
    return image


@pytest.mark.parametrize(
    "bits_allocated, bits_stored, signed, low, mid, high",
    [
        (8, 8, False, 10, 110, 250),
        (16, 12, False, 0, 1000, 4095),
        (16, 16, False, 100, 30000, 65535),
        (16, 12, True, -2048, 0, 2047),  # 12-bit two's complement must be sign-extended
        (16, 16, True, -32768, -1000, 32767),
        (8, 8, True, -128, 0, 127),
    ],
)
def test_no_window_uses_robust_range(write_dicom, bits_allocated, bits_stored, signed, low, mid, high):
    image = _three_levels(low, mid, high)
    stored = image if not signed else image & (2**bits_stored - 1)  # two's complement in bits_stored bits
    path = write_dicom(stored, bits_allocated=bits_allocated, bits_stored=bits_stored, signed=signed)
    pixels = read_dicom(path).pixels
    assert pixels[0, 0] == 0.0 and pixels[-1, 0] == 1.0
    np.testing.assert_allclose(pixels[32, 0], (mid - low) / (high - low), atol=1e-6)


def test_rescale_then_linear_window(write_dicom):
    # 16-bit unsigned stored, HU-like values after slope 2 / intercept -1024; window in rescaled units.
    stored = np.array([[0, 400, 512, 600, 1024] * 8] * 40, dtype=np.uint16)
    path = write_dicom(
        stored, RescaleSlope=2, RescaleIntercept=-1024, RescaleType="US", WindowCenter=0.5, WindowWidth=401
    )
    pixels = read_dicom(path).pixels
    values = stored[0, :5].astype(float) * 2 - 1024  # -1024, -224, 0, 176, 1024
    expected = np.clip((values - (0.5 - 0.5)) / (401 - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(pixels[0, :5], expected, atol=1e-6)
    assert pixels[0, 0] == 0.0 and pixels[0, 4] == 1.0


def test_signed_with_intercept_and_first_of_several_windows(write_dicom):
    stored = np.array([[-1000, -100, 0, 100, 1000] * 8] * 40, dtype=np.int16)
    path = write_dicom(
        stored,
        signed=True,
        RescaleSlope=1,
        RescaleIntercept=100,
        WindowCenter=[100, 5000],  # "soft" first, a useless second
        WindowWidth=[1001, 10],
    )
    pixels = read_dicom(path).pixels
    values = stored[0, :5].astype(float) + 100
    expected = np.clip((values - 99.5) / 1000 + 0.5, 0, 1)
    np.testing.assert_allclose(pixels[0, :5], expected, atol=1e-6)


@pytest.mark.parametrize("function", ["LINEAR_EXACT", "SIGMOID"])
def test_voi_lut_functions(write_dicom, function):
    stored = np.array([[1000, 1500, 2000, 2500, 3000] * 8] * 40, dtype=np.uint16)
    path = write_dicom(stored, bits_stored=12, WindowCenter=2000, WindowWidth=1000, VOILUTFunction=function)
    pixels = read_dicom(path).pixels
    x = stored[0, :5].astype(float)
    if function == "LINEAR_EXACT":
        expected = np.clip((x - 2000) / 1000 + 0.5, 0, 1)
    else:
        expected = 1 / (1 + np.exp(-4 * (x - 2000) / 1000))
    np.testing.assert_allclose(pixels[0, :5], expected, atol=1e-5)


def test_voi_lut_sequence_is_preferred_and_scaled_by_its_range(write_dicom, make_dataset, tmp_path):
    from pydicom.dataset import Dataset

    stored = np.array([[0, 1, 2, 3, 50] * 8] * 40, dtype=np.uint16)
    ds = make_dataset(stored, bits_stored=12, WindowCenter=2000, WindowWidth=10)
    item = Dataset()
    # 4 entries from stored value 0; the descriptor claims 16 bits, the data use 0..1000.
    item.add_new("LUTDescriptor", "US", [4, 0, 16])
    item.add_new("LUTData", "US", [0, 100, 700, 1000])
    ds.VOILUTSequence = [item]
    path = tmp_path / "lut.dcm"
    ds.save_as(path, enforce_file_format=True)
    pixels = read_dicom(path).pixels
    np.testing.assert_allclose(pixels[0, :5], [0.0, 0.1, 0.7, 1.0, 1.0], atol=1e-6)


def test_window_that_saturates_everything_falls_back_to_robust_range(write_dicom):
    stored = _three_levels(100, 200, 300).astype(np.uint16)
    # A window for some other image (range -2500..-1500): every pixel would be white.
    path = write_dicom(stored, bits_stored=12, WindowCenter=-2000, WindowWidth=1000)
    pixels = read_dicom(path).pixels
    assert pixels[0, 0] == 0.0 and pixels[-1, 0] == 1.0
    np.testing.assert_allclose(pixels[32, 0], 0.5, atol=1e-6)


def test_padding_pixels_are_black_and_ignored_by_the_range(write_dicom):
    stored = _three_levels(100, 200, 300).astype(np.uint16)
    stored[:, :8] = 4095  # collimator padding, outside any anatomy
    path = write_dicom(stored, bits_stored=12, PixelPaddingValue=4095, photometric="MONOCHROME1")
    pixels = read_dicom(path).pixels
    assert (pixels[:, :8] == 0.0).all()
    # The range comes from 100..300 (not 4095): MONOCHROME1 makes 100 white and 300 black.
    assert pixels[0, 20] == 1.0 and pixels[-1, 20] == 0.0


def test_apply_window_rejects_invalid_width():
    values = np.zeros((4, 4), np.float32)
    assert apply_window(values, 0, 1, "LINEAR") is None
    assert apply_window(values, 0, 0, "SIGMOID") is None
    assert apply_window(values, 0, 10, "CUBIC") is None


def test_compressed_synthetic_roundtrip(make_dataset, tmp_path):
    from pydicom.uid import JPEG2000Lossless, RLELossless

    stored = (np.add.outer(np.arange(64), np.arange(64)) * 30).astype(np.uint16)
    reference_path = tmp_path / "plain.dcm"
    make_dataset(stored, bits_stored=12).save_as(reference_path, enforce_file_format=True)
    reference = read_dicom(reference_path).pixels
    for uid in (RLELossless, JPEG2000Lossless):
        ds = make_dataset(stored, bits_stored=12)
        ds.compress(uid)
        path = tmp_path / f"{uid.keyword}.dcm"
        ds.save_as(path, enforce_file_format=True)
        image = read_dicom(path)
        assert image.meta["transfer_syntax"] == uid
        np.testing.assert_allclose(image.pixels, reference, atol=1e-6)


# ------------------------------------------------------------------------------------------ rejections


def _reason(path) -> str:
    with pytest.raises(UnusableImage) as info:
        read_image(path)
    assert "\n" not in info.value.reason
    return info.value.reason


def test_rejections_with_reasons(write_dicom, make_dataset, tmp_path):
    good = _three_levels(100, 200, 300).astype(np.uint16)
    assert "multi-frame" in _reason(write_dicom(np.concatenate([good, good]), "mf.dcm", NumberOfFrames=2, Rows=64))
    assert "too small" in _reason(write_dicom(good[:16, :16], "tiny.dcm"))
    assert "same value" in _reason(write_dicom(np.full((64, 64), 7, np.uint16), "flat.dcm"))
    assert "modality CT" in _reason(write_dicom(good, "ct.dcm", modality="CT"))
    assert "PALETTE COLOR" in _reason(write_dicom(good, "pal.dcm", photometric="PALETTE COLOR"))

    ds = make_dataset(good)
    del ds.PixelData
    path = tmp_path / "nopix.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert _reason(path).startswith("no pixel data")

    text = tmp_path / "notes.dcm"
    text.write_text("patient doing well, see report\n" * 20)
    assert _reason(text).startswith("not DICOM")
    empty = tmp_path / "empty.dcm"
    empty.touch()
    assert "empty file" in _reason(empty)


def test_truncated_native_and_encapsulated(rg_files, tmp_path):
    for name in ("RG3_UNCR.dcm", "RG3_J2KR.dcm"):
        data = rg_files[name].read_bytes()
        cut = tmp_path / f"cut_{name}"
        cut.write_bytes(data[: len(data) // 2])
        assert _reason(cut).startswith("truncated pixel data"), name


def test_colour_dicom_gray_content_kept_real_colour_rejected(write_dicom):
    gray = np.repeat(_three_levels(10, 100, 250)[..., None], 3, axis=-1).astype(np.uint8)
    image = read_dicom(write_dicom(gray, "sc.dcm", bits_allocated=8, photometric="RGB", modality="OT"))
    np.testing.assert_allclose(image.pixels[32, 0], 100 / 255, atol=1e-6)
    colour = gray.copy()
    colour[..., 0] = 255
    assert "colour" in _reason(write_dicom(colour, "photo.dcm", bits_allocated=8, photometric="RGB", modality="OT"))


def test_non_finite_values_rejected(make_dataset):
    ds = make_dataset(np.zeros((64, 64), np.uint16))
    raw = np.ones((64, 64), np.float32)
    raw[3, 3] = np.nan
    with pytest.raises(UnusableImage, match="non-finite"):
        to_display(raw, ds)


def test_transfer_syntax_without_decoder(make_dataset, tmp_path, monkeypatch):
    import pydicom.pixels
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless, MPEG2MPML

    good = _three_levels(100, 200, 300).astype(np.uint16)
    ds = make_dataset(good)
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([b"\x00" * 64])
    path = tmp_path / "mpeg.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert "no pixel decoder exists" in _reason(path)

    class MissingPlugins:
        is_available = False
        missing_dependencies = ["pylibjpeg - requires pylibjpeg-openjpeg"]

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: MissingPlugins())
    ds = make_dataset(good)
    ds.compress(JPEG2000Lossless)
    path = tmp_path / "j2k.dcm"
    ds.save_as(path, enforce_file_format=True)
    reason = _reason(path)
    assert "no installed decoder" in reason and "pylibjpeg-openjpeg" in reason


# ----------------------------------------------------------------------------- dispatch on content


def test_dispatch_on_content_not_suffix(rg_files, make_dataset, tmp_path):
    from PIL import Image

    # A DICOM named .png, and one with a UID-style name.
    fake_png = tmp_path / "really_dicom.png"
    fake_png.write_bytes(rg_files["RG3_J2KI.dcm"].read_bytes())
    assert read_image(fake_png).meta["source"] == "dicom"
    uid_named = tmp_path / "1.2.840.113619.2.55.3"
    uid_named.write_bytes(rg_files["RG3_J2KI.dcm"].read_bytes())
    assert is_candidate(uid_named) and not is_candidate(tmp_path / "notes.txt")
    assert IMAGE_SUFFIXES >= {".dcm", ".png", ".jpg", ".jpeg", ""}

    # A bare dataset: no preamble, no DICM marker.
    ds = make_dataset(_three_levels(100, 200, 300).astype(np.uint16))
    ds.preamble = None
    bare = tmp_path / "bare"
    ds.save_as(bare, enforce_file_format=False)
    assert bare.read_bytes()[128:132] != b"DICM"
    np.testing.assert_allclose(read_image(bare).pixels[32, 0], 0.5, atol=1e-6)

    # A PNG named .dcm.
    png_as_dcm = tmp_path / "export.dcm"
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))).save(png_as_dcm, format="PNG")
    assert read_image(png_as_dcm).meta["source"] == "png"


def test_png_and_jpeg_variants(tmp_path):
    from PIL import Image

    ramp8 = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    Image.fromarray(ramp8).save(tmp_path / "g8.png")
    image = read_image(tmp_path / "g8.png")
    np.testing.assert_allclose(image.pixels, ramp8 / 255, atol=1e-6)
    assert image.meta["anatomy"] is None and image.meta["source"] == "png" and tuple(image.meta) == META_KEYS

    # 16-bit PNG holding 12-bit data: stretched from its own min to max, not divided by 65535.
    ramp16 = np.tile(np.arange(64, dtype=np.uint16) * 64 + 100, (64, 1))
    Image.fromarray(ramp16).save(tmp_path / "g16.png")
    pixels = read_image(tmp_path / "g16.png").pixels
    assert pixels[0, 0] == 0.0 and pixels[0, -1] == 1.0
    np.testing.assert_allclose(pixels[0], (ramp16[0] - 100) / (63 * 64), atol=1e-6)

    Image.fromarray(np.stack([ramp8] * 3, axis=-1)).save(tmp_path / "rgb.jpg", quality=95)
    np.testing.assert_allclose(read_image(tmp_path / "rgb.jpg").pixels, ramp8 / 255, atol=0.03)

    palette = Image.fromarray(ramp8).convert("P")
    palette.save(tmp_path / "pal.png")
    np.testing.assert_allclose(read_image(tmp_path / "pal.png").pixels, ramp8 / 255, atol=0.02)

    colourful = np.zeros((64, 64, 3), np.uint8)
    colourful[..., 0] = 200
    Image.fromarray(colourful).save(tmp_path / "photo.png")
    assert "colour" in _reason(tmp_path / "photo.png")

    data = (tmp_path / "rgb.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    assert "JPEG" in _reason(tmp_path / "cut.jpg")

    header = read_image_header(tmp_path / "g16.png")
    assert (header["rows"], header["columns"], header["bits_stored"]) == (64, 64, 16)


# ----------------------------------------------------------------------------------------- anatomy


@pytest.mark.parametrize(
    "body_part, extra, expected",
    [
        ("CHEST", None, "chest"),
        ("THORAX", None, "chest"),
        ("chest", None, "chest"),
        ("L SPINE", None, "spine"),
        ("LSPINE", None, "spine"),
        ("C-Spine", None, "spine"),
        ("HAND", None, "hand"),
        ("HANDGELENK", None, "wrist"),
        ("KNEE", None, "knee"),
        ("PELVIS", None, "pelvis"),
        ("SKULL", None, "skull"),
        ("TIBIA", None, "leg"),
        ("LEG", None, "leg"),
        ("Fuß", None, "foot"),
        ("EXTREMITY", "Non-ossifying fibroma of distal tibia", "leg"),
        ("EXTREMITY", None, "other"),
        (None, "PA CHEST 2 VIEWS", "chest"),
        ("", None, None),
        (None, None, None),
        ("XYZ123", None, None),
    ],
)
def test_normalise_anatomy(body_part, extra, expected):
    assert normalise_anatomy(body_part, extra) == expected


def test_no_warnings_escape_reading(rg_files):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_dicom_header(rg_files["RG1_UNCI.dcm"])
        read_image_header(Path(rg_files["RG3_J2KI.dcm"]))
