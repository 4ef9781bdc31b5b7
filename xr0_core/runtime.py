"""Device, precision and seeded randomness (STYLE 9, 11: no global RNG, device from config)."""

from __future__ import annotations

import contextlib
import hashlib

import numpy as np
import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is an error that says so."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device = cuda but no CUDA device is visible; use auto or cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (``auto`` or ``bf16``); a no-op on CPU, where bf16 matmuls are slow."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from (run seed, site, round, step, ...) so every stream is reproducible and distinct."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def torch_generator(*parts: object) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(derive_seed(*parts))
    return g


def numpy_rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(derive_seed(*parts))
