"""Names shared by the client and server stages (message actions, record and metric keys).

Message types are ``<category>.<action>`` as Flower's ClientApp routes them: ``query.secagg_setup`` goes to
``@app.query("secagg_setup")`` (actions must be Python identifiers), ``train.secagg`` to ``@app.train("secagg")``.
"""

from __future__ import annotations

import io
import math
from collections import OrderedDict

import numpy as np
from numpy.lib import format as npy_format

SETUP = "secagg_setup"  # query action: fresh key pairs -> public keys
SHARE_KEYS = "secagg_share_keys"  # query action: neighbours' keys -> encrypted shares
TRAIN_ACTION = "secagg"  # train action: train + masked upload
CONSISTENCY = "secagg_consistency"  # query action: survivor lists -> the site's signature over them
UNMASK = "secagg_unmask"  # query action: alive / dropped + every uploader's signature -> shares

REC = "secagg"  # ConfigRecord with the stage's protocol fields (both directions)
MASKED = "secagg-masked"  # ArrayRecord holding the masked upload as one uint array "words"
WORDS = "words"
CLIPPED = "secagg-clipped"  # metric: coordinates clipped to the declared range
WEIGHT_CAPPED = "secagg-weight-capped"  # kept at the site (logged there): it says num-examples > weight-cap
PINNED = "secagg-pinned"  # per-site metric at the coordinator: how many peer signing keys the site pinned (0: none)


def graph_to_flat(graph: dict[int, tuple[int, ...]]) -> dict:
    """The neighbour graph as ConfigRecord lists: nodes and the edge list (u < v)."""
    edges = [(u, v) for u in sorted(graph) for v in graph[u] if u < v]
    return {"graph-nodes": sorted(graph), "edge-a": [u for u, _ in edges], "edge-b": [v for _, v in edges]}


def graph_from_flat(rec) -> dict[int, tuple[int, ...]]:
    adj: dict[int, set[int]] = {int(u): set() for u in rec["graph-nodes"]}
    for a, b in zip(rec.get("edge-a", []), rec.get("edge-b", [])):
        a, b = int(a), int(b)
        if a not in adj or b not in adj or a == b:
            raise ValueError("the neighbour graph names a node outside the round")
        adj[a].add(b)
        adj[b].add(a)
    return {u: tuple(sorted(vs)) for u, vs in adj.items()}


_HEADERS: "OrderedDict[bytes, tuple[tuple[int, ...], bool, np.dtype]]" = OrderedDict()
HEADER_CACHE = 1024  # distinct headers remembered: one per (dtype, shape) of a model's tensors


def _npy_header(data: memoryview) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, data offset)`` of the ``.npy`` image ``data``, parsed by numpy's own reader.

    numpy's header reader (``ast.literal_eval`` of a dict literal) costs ~70 us; a round at 100 hospitals reads
    ~7,000 headers of the same ~70 (dtype, shape) pairs (issue 27: two thirds of the coordinator's aggregation).
    So its answer is remembered per header *bytes*: the same bytes always parse to the same answer, so a hit
    is exactly what numpy would return, and only the header (at most a few hundred bytes) is copied to look
    it up."""
    if len(data) < 10 or bytes(data[:6]) != npy_format.MAGIC_PREFIX:
        raise ValueError("not a .npy image (bad magic)")
    major = data[6]
    if major == 1:
        end = 10 + int.from_bytes(data[8:10], "little")
    elif major == 2:  # (3.0, utf-8 field names, is refused as before: numpy reads it with another encoding)
        if len(data) < 12:
            raise ValueError("not a .npy image (truncated header)")
        end = 12 + int.from_bytes(data[8:12], "little")
    else:
        raise ValueError(f"unsupported .npy format version {major}")
    if end > len(data):
        raise ValueError("not a .npy image (truncated header)")
    key = bytes(data[:end])
    hit = _HEADERS.get(key)
    if hit is None:
        head = io.BytesIO(key)
        npy_format.read_magic(head)
        reader = npy_format.read_array_header_1_0 if major == 1 else npy_format.read_array_header_2_0
        shape, fortran, dtype = reader(head)  # numpy's own parse and checks
        if head.tell() != end:
            raise ValueError("not a .npy image (header length)")
        hit = (tuple(shape), bool(fortran), dtype)
        _HEADERS[key] = hit
        while len(_HEADERS) > HEADER_CACHE:
            _HEADERS.popitem(last=False)
    return (*hit, end)


def npy_view(data: bytes) -> np.ndarray:
    """A read-only array over the bytes of one ``.npy`` image (what a Flower ``Array`` of stype numpy holds),
    without the copy ``np.load`` makes: both sides read 20 M+ words per site per round through this.

    Parameters
    ----------
    data : bytes-like (bytes, bytearray, memoryview, or a 1-D C-contiguous uint8 array)
        ``np.save`` output (C or Fortran order, any plain numeric dtype).

    Returns
    -------
    np.ndarray
        Shape and dtype as saved; a view of ``data`` (read-only).

    Raises
    ------
    ValueError
        Not a ``.npy`` image, an object dtype (never unpickled), or a length that does not match its header.
    """
    if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 1 and data.flags.c_contiguous:
        data = memoryview(data)  # a reply's bytes as a view of Ray's object store (simulation.shared_weights.out_of_band)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError("array data must be bytes")
    view = memoryview(data).cast("B")
    shape, fortran, dtype, offset = _npy_header(view)
    if dtype.hasobject:
        raise ValueError("arrays of Python objects are never read")
    count = math.prod(shape)
    if offset + count * dtype.itemsize != len(view):
        raise ValueError(f"array data holds {len(view) - offset} bytes, its header says {count * dtype.itemsize}")
    flat = np.frombuffer(view, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C")


def npy_bytes(arr: np.ndarray) -> bytes:
    """``np.save(buf, arr, allow_pickle=False); buf.getvalue()`` (what Flower's ``Array(ndarray)`` holds), byte
    for byte, with one copy of the values instead of np.save's chunked ``tobytes`` + ``BytesIO`` writes (~3
    copies: 7 ms of every 8.8 MB reply, issue 27).

    Parameters
    ----------
    arr : np.ndarray
        Any shape; C-contiguous arrays of a plain dtype take the one-copy path (the header numpy's own
        ``write_array_header_1_0`` writes), anything else goes through ``np.save`` itself.
    """
    head = io.BytesIO()
    if arr.flags.c_contiguous and not arr.dtype.hasobject and arr.dtype.itemsize > 0:
        try:
            npy_format.write_array_header_1_0(head, npy_format.header_data_from_array_1_0(arr))
            return b"".join((head.getvalue(), arr.reshape(-1).view(np.uint8)))  # the values' bytes, C order
        except ValueError:  # a header too long for format 1.0: np.save picks another version itself
            head = io.BytesIO()
    np.save(head, arr, allow_pickle=False)
    return head.getvalue()


class NpyWriter:
    """A 1-D ``.npy`` image written piece by piece, handed over as ``bytes`` without a final copy.

    What a Flower ``Array`` must hold is ``bytes``; building the words in an array and then converting them
    (``np.save``, or a header joined to the array's buffer) costs a second model-sized buffer and a pass
    over it. Here each piece is appended to a ``BytesIO`` sized once for the whole image, whose
    :meth:`getvalue` returns its own buffer when it is full (CPython shares it instead of copying), so a
    masked upload is written to memory exactly once.

    Parameters
    ----------
    dtype : np.dtype
        Word type of the image.
    size : int
        Number of words it will hold (shape ``[size]``).
    """

    def __init__(self, dtype: np.dtype, size: int) -> None:
        self.dtype, self.size = np.dtype(dtype), int(size)
        head = io.BytesIO()
        npy_format.write_array_header_1_0(head, {"descr": npy_format.dtype_to_descr(self.dtype),
                                                 "fortran_order": False, "shape": (self.size,)})
        self._buf = io.BytesIO()
        self._buf.write(head.getvalue())
        self._start = self._buf.tell()
        self._end = self._start + self.size * self.dtype.itemsize
        if self.size:  # one allocation of the final size (a null byte at the end), then written in order
            self._buf.seek(self._end - 1)
            self._buf.write(b"\0")
            self._buf.seek(self._start)

    def write(self, words: np.ndarray) -> None:
        """Append ``words`` (1-D, ``dtype``, contiguous)."""
        if words.dtype != self.dtype or words.ndim != 1 or not words.flags.c_contiguous:
            raise ValueError(f"an .npy image of {self.dtype} takes contiguous 1-D {self.dtype} pieces")
        if self._buf.tell() + words.nbytes > self._end:
            raise ValueError(f"more than the {self.size} words announced")
        self._buf.write(memoryview(words).cast("B"))

    def getvalue(self) -> bytes:
        """The complete image (every announced word written); the writer is spent afterwards."""
        if self._buf.tell() != self._end:
            raise ValueError(f"{(self._buf.tell() - self._start) // self.dtype.itemsize} of {self.size} words written")
        data = self._buf.getvalue()
        self._buf = None  # type: ignore[assignment]  # a later write would copy the shared buffer
        return data


NUMPY_STYPE = "numpy.ndarray"  # flwr.common.constant.SType.NUMPY (no Flower import here)


def array_view(arr) -> np.ndarray:
    """The array a Flower ``Array`` holds: read in place (:func:`npy_view`) when it is numpy-serialized, else
    through the ``Array``'s own ``numpy()``."""
    return npy_view(arr.data) if getattr(arr, "stype", None) == NUMPY_STYPE else arr.numpy()


def release(content, names=None) -> None:
    """Empty a Flower ``RecordDict`` (or only its records ``names``) once it has been read, so its arrays are
    freed now: the records themselves are emptied too (so the caller must own them).

    Flower's records hold their entries through views with callbacks bound to them (reference cycles): a
    dropped message is freed only when Python's cyclic collector next runs, and with 20 M+ parameter arrays
    in each, several sites' uploads and weights pile up meanwhile (150 MB per site at 22 M parameters).
    Emptying the records lets reference counting free the arrays at once.
    """
    for key in list(content) if names is None else [n for n in names if n in content]:
        record = content[key]
        for name in list(record):
            del record[name]
        del content[key]
