"""Records as bytes: encoding embeddings into fixed-size records and back, and the checks on
what a writer is given (keys, record headers, finite values, the float16 range).

A record is ``header_bytes`` followed by the payload: ``float16`` (little-endian, C order) or
``int8`` (one little-endian float32 scale per channel -- the first axis -- then the int8
values, C order), half the bytes of float16. The int8 step of a channel is max|channel| / 127:
int8 stays close to the float16 record while each channel's values are roughly bell-shaped
(outlier *channels* are fine: each has its own scale) and loses precision where a few
positions dominate a channel's range (heavy tails, high-norm tokens). Prefer float16 unless
disk is the constraint, and check real teacher outputs with ``verify(recompute=...)``;
``benchmarks/store_throughput.py`` measures the fidelity on synthetic data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from stage1.store.spec import FP16_MAX, Float16OverflowError, StoreSpec

CHUNK_BYTES = 64 << 20  # encode / verify this many bytes of records at a time


def as_numpy(values: np.ndarray | torch.Tensor) -> np.ndarray:
    """``values`` as a floating-point numpy array (a tensor is detached and moved to the CPU;
    bfloat16 becomes float32). ``TypeError`` for integer or boolean values."""
    if isinstance(values, torch.Tensor):
        tensor = values.detach()
        if not tensor.is_floating_point():
            raise TypeError(f"embeddings must be floating point, got a {tensor.dtype} tensor")
        if tensor.dtype not in (torch.float16, torch.float32, torch.float64):
            tensor = tensor.float()  # bfloat16 and friends: numpy has no such dtype
        return tensor.cpu().numpy()
    array = np.asarray(values)
    if array.dtype.kind != "f":
        raise TypeError(f"embeddings must be floating point, got a {array.dtype} array")
    return array


def chunks(n: int, record_nbytes: int) -> list[tuple[int, int]]:
    """``(lo, hi)`` ranges over ``n`` records of ``record_nbytes`` each, about
    :data:`CHUNK_BYTES` per range (at least one record)."""
    step = max(1, CHUNK_BYTES // max(1, record_nbytes))
    return [(lo, min(n, lo + step)) for lo in range(0, n, step)]


def scan(values: np.ndarray, keys: Sequence[str], spec: StoreSpec) -> tuple[int, list[str]]:
    """Raise ``ValueError`` on non-finite records; count float16-overflowing values and name
    their keys."""
    count, over_keys = 0, []
    for lo, hi in chunks(len(values), values[0].nbytes if len(values) else 1):
        flat = values[lo:hi].reshape(hi - lo, -1)
        finite = np.isfinite(flat).all(axis=1)
        if not finite.all():
            bad = [keys[lo + i] for i in np.flatnonzero(~finite)]
            raise ValueError(
                f"embeddings for keys {bad[:5]} contain NaN or inf, so nothing was written (the "
                "teacher output is broken) — check the checkpoint and the export precision"
            )
        if spec.encoding == "float16" and flat.dtype != np.float16:
            per_record = np.count_nonzero(np.abs(flat) > FP16_MAX, axis=1)
            count += int(per_record.sum())
            over_keys += [keys[lo + i] for i in np.flatnonzero(per_record)]
    return count, over_keys


def encode(values: np.ndarray, spec: StoreSpec, headers: np.ndarray | None = None) -> np.ndarray:
    """[N, *shape] floats -> [N, record_bytes] uint8 (float16 values clamped to +/-65504),
    each record after its header: a row of ``headers`` ([N, header_bytes] uint8) or zeros."""
    n = len(values)
    if spec.encoding == "float16":
        flat = values.reshape(n, -1)
        if flat.dtype != np.float16:
            flat = np.clip(flat, -FP16_MAX, FP16_MAX)
        body = flat.astype("<f2", copy=False).view(np.uint8)
    else:
        x = values.reshape(n, spec.shape[0], -1).astype(np.float32, copy=False)
        scale = (np.abs(x).max(axis=2) / 127.0).astype(np.float32)
        scale[scale < np.finfo(np.float32).tiny] = 0.0  # zero (or subnormal) channel -> zeros
        inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)
        q = np.clip(np.rint(x * inv[:, :, None]), -127, 127).astype(np.int8)
        body = np.concatenate(
            [scale.astype("<f4").view(np.uint8), q.reshape(n, -1).view(np.uint8)], axis=1
        )
    if spec.header_bytes:
        if headers is None:
            headers = np.zeros((n, spec.header_bytes), np.uint8)
        body = np.concatenate([headers, body], axis=1)
    return np.ascontiguousarray(body)


def encode_records(
    values: np.ndarray | torch.Tensor, spec: StoreSpec, allow_overflow: bool = False
) -> np.ndarray:
    """Encode [N, *shape] embeddings into [N, record_bytes] uint8 records, as the writer does
    (float16 overflow raises :class:`Float16OverflowError` unless ``allow_overflow``)."""
    array = as_numpy(values)
    count, _ = scan(array, [str(i) for i in range(len(array))], spec)
    if count and not allow_overflow:
        raise Float16OverflowError(f"{count} values exceed the float16 range +/-{FP16_MAX}")
    return encode(array, spec)


def decode_record(record: np.ndarray, spec: StoreSpec) -> np.ndarray:
    """One record's bytes (uint8, ``record_bytes`` long) -> array of ``spec.shape``: a float16
    view for float16 stores, a new float32 array for int8 stores."""
    body = record[spec.header_bytes :]
    if spec.encoding == "float16":
        return body.view("<f2").reshape(spec.shape)
    channels = spec.shape[0]
    scale = body[: 4 * channels].view("<f4")
    q = body[4 * channels :].view(np.int8).reshape(channels, -1)
    return (q.astype(np.float32) * scale[:, None]).reshape(spec.shape)


def nonfinite_rows(rows: np.ndarray, spec: StoreSpec) -> np.ndarray:
    """Per record of ``rows`` ([N, record_bytes] uint8): whether it decodes to NaN/inf (a
    float16 value, or an int8 scale that is not finite or negative)."""
    body = rows[:, spec.header_bytes :]
    if spec.encoding == "float16":
        return ~np.isfinite(body.view("<f2")).all(axis=1)
    scale = body[:, : 4 * spec.shape[0]].view("<f4")
    return ~(np.isfinite(scale) & (scale >= 0)).all(axis=1)


def check_keys(keys: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the first key a store cannot hold (empty, not printable,
    or with whitespace)."""
    for key in keys:
        if not isinstance(key, str) or not key or not key.isprintable():
            raise ValueError(
                f"bad key {key!r}: empty, not a string or not printable — use non-empty "
                "printable strings as keys"
            )
        if any(c.isspace() for c in key):
            raise ValueError(
                f"bad key {key!r}: it holds whitespace — give keys without spaces or newlines"
            )


def header_rows(headers: Sequence[bytes], keys: Sequence[str], size: int) -> np.ndarray:
    """``headers`` (one bytes of ``size`` per key) as [len(keys), size] uint8; ValueError
    naming the first bad one."""
    headers = list(headers)
    if len(headers) != len(keys):
        raise ValueError(
            f"{len(headers)} record headers for {len(keys)} keys — give one header per key"
        )
    for key, header in zip(keys, headers):
        if not isinstance(header, (bytes, bytearray)) or len(header) != size:
            got = f"{len(header)} bytes" if isinstance(header, (bytes, bytearray)) else "not bytes"
            raise ValueError(
                f"the record header of key {key!r} is {got} — this store's headers are bytes of "
                f"exactly {size} bytes (spec.header_bytes)"
            )
    return np.frombuffer(b"".join(headers), np.uint8).reshape(len(keys), size)
