"""Fixed-point encoding of a client's update into the ring Z_2^bits, with headroom for n clients.

A client sends ``q = rint(clip(d, -R, R) * wq / R)`` for every coordinate ``d`` of its update and ``wq``
(its quantized weight, ``0 <= wq <= L``) as one extra word. Every ``|q| <= wq <= L`` with
``L = (2^(bits-1) - 1) // max_clients``, so the sum over at most ``max_clients`` *honest* clients lies in
``[-(2^(bits-1) - 1), 2^(bits-1) - 1]`` and reads back from Z_2^bits without ambiguity: for honest clients
overflow is impossible by construction. A hostile client can send any words; :func:`check_sum` refuses an
unmasked sum no set of honest clients could give. The weighted mean is then ``R * sum(q) / sum(wq)``.

Error bound: each ``q`` is off by at most 1/2 from ``d * wq / R``, so the decoded mean is within
``R * n / (2 * sum(wq))`` of the exact ``wq``-weighted mean of the clipped updates (n = clients summed);
``wq`` itself is within 1/2 of ``L * num-examples / weight-cap``, which moves the mean by at most
``R * n / sum(wq)`` more (where a tiny positive weight is raised to one level, up to ``2 R n / sum(wq)``).
:func:`mean_error_bound` returns the sum of both: ``2.5 * R * n / sum(wq)``,
the distance to the exact example-weighted mean of the clipped updates. Values outside ``[-R, R]`` are clipped and *counted*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SUPPORTED_BITS = (16, 32)
_CHUNK = 1 << 20  # elements per float64 working chunk: bounds peak memory for 20 M+ parameter models
_PIECE = 1 << 16  # elements per encoding step: the float64 scratch (512 KB) stays in cache


class QuantizationError(ValueError):
    """Quantization parameters or an update that cannot be encoded (e.g. NaN)."""


@dataclass(frozen=True)
class QuantSpec:
    """Ring and fixed-point parameters of one secure-aggregation round.

    Parameters
    ----------
    bits : int
        Ring width: words live in Z_2^bits (16 -> uint16 on the wire, 32 -> uint32).
    value_range : float
        R: update coordinates are clipped to ``[-R, R]`` (clipping is counted).
    max_clients : int
        n: the most uploads that will be summed; sets the per-client level count ``L``.
    """

    bits: int
    value_range: float
    max_clients: int

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise QuantizationError(f"secagg.quant-bits must be one of {SUPPORTED_BITS}, got {self.bits}")
        if not (math.isfinite(self.value_range) and self.value_range > 0):
            raise QuantizationError(f"secagg.quant-range must be a positive number, got {self.value_range}")
        if self.max_clients < 1:
            raise QuantizationError(f"max_clients must be >= 1, got {self.max_clients}")
        if self.levels < 2:
            raise QuantizationError(
                f"{self.max_clients} clients leave fewer than 2 levels in {self.bits}-bit words; "
                "use secagg.quant-bits=32 or fewer clients per round"
            )

    @property
    def modulus(self) -> int:
        return 1 << self.bits

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16 if self.bits == 16 else np.uint32)

    @property
    def levels(self) -> int:
        """L: the largest ``|q|`` one client may send (``n * L < 2^(bits-1)``)."""
        return ((1 << (self.bits - 1)) - 1) // self.max_clients

    def quantize_weight(self, fraction: float) -> int:
        """``wq = rint(fraction * L)`` for a weight fraction in ``[0, 1]``, at least 1 when the fraction is
        positive (a small site in a 16-bit ring would otherwise round to 0 and silently contribute nothing)."""
        if not (math.isfinite(fraction) and 0.0 <= fraction <= 1.0):
            raise QuantizationError(f"weight fraction must be in [0, 1], got {fraction}")
        wq = int(round(fraction * self.levels))
        return max(1, wq) if fraction > 0 else 0

    def weight_resolution(self, weight_cap: float) -> float:
        """Examples per weight level (``weight_cap / L``): weights are rounded to multiples of this."""
        return weight_cap / self.levels


class ChunkEncoder:
    """:func:`quantize` one piece at a time, with reused scratch buffers (no whole-vector float64 copy).

    ``encode_into(d, out)`` writes ``rint(clip(d, -R, R) * wq / R) mod 2^bits`` for consecutive pieces ``d``
    of the flat update; the words are bit-identical to :func:`quantize` of the whole vector whatever the
    piece sizes (the same float64 operations, element by element).

    Parameters
    ----------
    wq : int
        Quantized weight from :meth:`QuantSpec.quantize_weight`, ``0 <= wq <= L``.
    spec : QuantSpec
    """

    def __init__(self, wq: int, spec: QuantSpec) -> None:
        if not 0 <= wq <= spec.levels:
            raise QuantizationError(f"quantized weight {wq} outside [0, {spec.levels}]")
        self.wq, self.spec = int(wq), spec
        self.scale = wq / spec.value_range
        self.clipped = 0  # coordinates clipped so far
        self._f = np.empty(_PIECE, dtype=np.float64)
        self._signed = np.int16 if spec.bits == 16 else np.int32

    def encode_into(self, d: np.ndarray, out: np.ndarray, scratch: bool = False) -> None:
        """Encode the next piece ``d`` (shape [N], any float dtype) into ``out`` (shape [N], ``spec.dtype``).

        ``scratch``: ``d`` (float64, contiguous) may be overwritten, which saves copying it.

        Raises
        ------
        QuantizationError
            ``d`` holds NaN or infinite values (the site refuses to send such an update).
        """
        d = np.asarray(d).reshape(-1)
        if out.shape != d.shape or out.dtype != self.spec.dtype:
            raise QuantizationError(f"encode {d.size} values into {d.size} {self.spec.dtype} words")
        r = self.spec.value_range
        in_place = scratch and d.dtype == np.float64 and d.flags.c_contiguous and d.flags.writeable
        signed_out = out.view(self._signed)
        for start in range(0, d.size, _PIECE):
            src = d[start : start + _PIECE]
            n = src.size
            if in_place:
                f = src
            else:
                f = self._f[:n]
                np.copyto(f, src)  # float32 -> float64 is exact; float64 is copied
            lo, hi = np.minimum.reduce(f), np.maximum.reduce(f)  # NaN propagates: it fails both tests below
            if not (-r <= lo and hi <= r):
                if not np.all(np.isfinite(f)):
                    raise QuantizationError("the update holds NaN or infinite values; refusing to send it")
                self.clipped += int(np.count_nonzero(f > r)) + int(np.count_nonzero(f < -r))
                np.clip(f, -r, r, out=f)
            np.multiply(f, self.scale, out=f)
            np.rint(f, out=f)
            # float64 -> signed word (exact: |q| <= L < 2^(bits-1)); its two's-complement bits read as the
            # unsigned word are q mod 2^bits, exactly the ring embedding.
            np.copyto(signed_out[start : start + n], f, casting="unsafe")


def quantize(update: np.ndarray, wq: int, spec: QuantSpec) -> tuple[np.ndarray, int]:
    """Encode a weighted update as ring words.

    Parameters
    ----------
    update : np.ndarray, shape [P]
        Flat floating-point update (e.g. new weights minus global weights).
    wq : int
        Quantized weight from :meth:`QuantSpec.quantize_weight`, ``0 <= wq <= L``.
    spec : QuantSpec

    Returns
    -------
    words : np.ndarray, shape [P + 1], dtype ``spec.dtype``
        ``rint(clip(update) * wq / R) mod 2^bits`` followed by ``wq``.
    clipped : int
        Number of coordinates outside ``[-R, R]`` that were clipped.
    """
    flat = np.asarray(update).reshape(-1)
    enc = ChunkEncoder(wq, spec)
    words = np.empty(flat.size + 1, dtype=spec.dtype)
    enc.encode_into(flat, words[:-1])
    words[-1] = wq
    return words, enc.clipped


def _signed_view(words: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """Ring words read as two's-complement signed integers of the same width (a view, no copy)."""
    return words.view(np.int16 if spec.bits == 16 else np.int32)


def to_signed(words: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """Ring words -> signed int64 in ``[-2^(bits-1), 2^(bits-1))``."""
    return _signed_view(np.ascontiguousarray(words, dtype=spec.dtype), spec).astype(np.int64)


def check_sum(sum_words: np.ndarray, spec: QuantSpec, num_clients: int) -> int:
    """Check an unmasked ring sum is one that ``num_clients`` honest :func:`quantize` outputs can give.

    Honest clients send ``0 <= wq <= L`` and every ``|q| <= wq``, so the sum must have
    ``0 < sum(wq) <= num_clients * L`` and every ``|sum(q)| <= sum(wq)``. A word pushed outside the
    encoding (2^28 added to one word, a negative weight) breaks this with overwhelming probability;
    a hostile client that stays *inside* the encoding is not caught (no range proofs, see
    docs/secure-aggregation.md).

    Parameters
    ----------
    sum_words : np.ndarray, shape [P + 1]
    spec : QuantSpec
    num_clients : int
        Uploads in the sum.

    Returns
    -------
    int
        ``sum(wq)``.

    Raises
    ------
    QuantizationError
        Naming the first violated bound.
    """
    total_wq = int(to_signed(sum_words[-1:], spec)[0])
    if not 0 < total_wq <= num_clients * spec.levels:
        raise QuantizationError(f"summed weight {total_wq} outside (0, {num_clients} x {spec.levels}]")
    n = sum_words.size - 1
    signed = _signed_view(np.ascontiguousarray(sum_words, dtype=spec.dtype), spec)
    for start in range(0, n, _CHUNK):
        chunk = signed[start : min(start + _CHUNK, n)]
        if not chunk.size:
            continue
        # max and -min instead of abs: abs(-2^31) does not fit the word type.
        hi, lo = int(chunk.max()), int(chunk.min())
        if max(hi, -lo) > total_wq:
            j = start + int(chunk.argmax() if hi >= -lo else chunk.argmin())
            raise QuantizationError(f"coordinate {j} sums to {max(hi, -lo)}, beyond the summed weight {total_wq}")
    return total_wq


def decode_mean(sum_words: np.ndarray, spec: QuantSpec) -> tuple[np.ndarray, int]:
    """Weighted mean from the ring sum of several :func:`quantize` outputs.

    Parameters
    ----------
    sum_words : np.ndarray, shape [P + 1]
        Sum (mod 2^bits) of at most ``spec.max_clients`` encoded updates.

    Returns
    -------
    mean : np.ndarray, shape [P], float64
        ``R * sum(q) / sum(wq)``.
    total_wq : int
        ``sum(wq)``; the mean is undefined (ValueError) when it is 0.
    """
    total_wq = int(to_signed(sum_words[-1:], spec)[0])
    if total_wq <= 0:
        raise QuantizationError("the summed weight is zero: no client contributed a positive weight")
    signed = _signed_view(np.ascontiguousarray(sum_words, dtype=spec.dtype), spec)
    mean = np.empty(sum_words.size - 1, dtype=np.float64)
    factor = spec.value_range / total_wq
    for start in range(0, mean.size, _CHUNK):
        end = min(start + _CHUNK, mean.size)
        np.multiply(signed[start:end], factor, out=mean[start:end])  # int -> float64 is exact
    return mean, total_wq


def mean_error_bound(spec: QuantSpec, num_clients: int, total_wq: int) -> float:
    """Largest ``|decoded mean - exact example-weighted mean of the clipped updates|`` per coordinate.

    ``R n / (2 sum(wq))`` from rounding each ``q``, plus ``2 R n / sum(wq)`` from ``wq`` being within 1 of
    ``L * fraction`` (1/2 from rounding, up to 1 where a tiny positive weight is raised to one level).
    """
    return 2.5 * spec.value_range * num_clients / total_wq


def clip_probability(noise_std: float, value_range: float) -> float:
    """P(|N(0, noise_std^2)| > R): the share of coordinates client-level noise alone pushes out of range."""
    if noise_std <= 0:
        return 0.0
    return math.erfc(value_range / (noise_std * math.sqrt(2.0)))


def setting_warnings(spec: QuantSpec, weight_cap: float, client_noise_std: float = 0.0) -> list[str]:
    """Problems of a round's quantization settings, known before any site trains (empty: none).

    Parameters
    ----------
    spec : QuantSpec
    weight_cap : float
        ``secagg.weight-cap``.
    client_noise_std : float
        Std of the client-level DP noise each site adds per coordinate (``sigma * C``; 0: none).
    """
    out = []
    p = clip_probability(client_noise_std, spec.value_range)
    if p > 1e-3:
        out.append(f"client-level noise (std {client_noise_std:g} per coordinate at each site) against "
                   f"secagg.quant-range {spec.value_range:g}: about {100 * p:.1f} % of coordinates clip, which cuts "
                   f"the noise and shrinks the signal; set secagg.quant-range >= {4 * client_noise_std:g}")
    res = spec.weight_resolution(weight_cap)
    if res > 1.0:
        out.append(f"weights are rounded to multiples of {res:.3g} examples ({spec.bits}-bit ring, "
                   f"{spec.max_clients} sites, weight-cap {weight_cap:g}); a site below {res / 2:.3g} examples counts "
                   "as one level; use secagg.quant-bits = 32 or a smaller weight-cap")
    return out
