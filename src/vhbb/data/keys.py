"""Event keys and deterministic, key-based splits (folds, validation, control-region data).

An event is identified by (sample, run, luminosityBlock, event): event numbers repeat across
files and samples.  Splits hash the key with splitmix64 so they are reproducible, independent
of file order and chunking, and independent of each other (a different salt per split).
"""

from __future__ import annotations

import zlib

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)

SALT_FOLD = 0x0F01D
SALT_VALIDATION = 0x5A11D
SALT_CR_SPLIT = 0xC0DA7


def sample_id(sample: str) -> int:
    """A stable 32-bit id of a sample name (CRC32)."""
    return zlib.crc32(sample.encode())


def _mix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x.astype(np.uint64, copy=True)
        x ^= x >> np.uint64(30)
        x *= _M1
        x ^= x >> np.uint64(27)
        x *= _M2
        x ^= x >> np.uint64(31)
    return x


def key_hash(
    sample: str | np.ndarray, run: np.ndarray, lumi: np.ndarray, event: np.ndarray, salt: int = 0
) -> np.ndarray:
    """64-bit hash of event keys; ``sample`` is a name or an array of :func:`sample_id` values."""
    sid = (
        np.full(np.shape(run), sample_id(sample), dtype=np.uint64)
        if isinstance(sample, str)
        else np.asarray(sample, dtype=np.uint64)
    )
    h = _mix(np.asarray(salt, dtype=np.uint64) + _GOLDEN + sid)
    with np.errstate(over="ignore"):
        for part in (run, lumi, event):
            h = _mix(h ^ (np.asarray(part).astype(np.uint64) + _GOLDEN))
    return h


def fold(sample, run, lumi, event, k: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """``fold = hash(event key) mod k``."""
    return (key_hash(sample, run, lumi, event, SALT_FOLD) % np.uint64(k)).astype(np.int8)


def unit_uniform(sample, run, lumi, event, salt: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """A deterministic number in [0, 1) per event, independent for different salts."""
    h = key_hash(sample, run, lumi, event, salt)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
