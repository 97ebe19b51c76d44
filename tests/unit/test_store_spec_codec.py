"""The store's spec and record encoding: sizes, JSON round trip, the source digest, the byte
layout of float16 and int8 records, int8 fidelity, bfloat16 input, float16 overflow, keys."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from stage1.store import (
    DIGEST_BYTES,
    SOURCE_DIGEST,
    EmbeddingStore,
    Float16OverflowError,
    StoreSpec,
    StoreWriter,
    check_keys,
    decode_record,
    encode_records,
    source_digest,
)

from helpers.store import IMG, META, TXT, batch, new_store, record


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_spec_sizes_and_json_round_trip():
    fp16 = StoreSpec(IMG, "float16", meta=META)
    assert fp16.record_bytes == 2 * 36
    assert StoreSpec(IMG, "int8").record_bytes == 4 * 4 + 36
    assert StoreSpec(IMG, "float16", header_bytes=4).record_bytes == 76
    again = StoreSpec.from_json(fp16.to_json())
    assert again == fp16 and again.meta["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="encoding"):
        StoreSpec(IMG, "bfloat16")
    with pytest.raises(ValueError, match="JSON"):
        StoreSpec(IMG, meta={"bad": object()})
    with pytest.raises(ValueError, match="size below 1"):
        StoreSpec((4, 0, 3))
    with pytest.raises(ValueError, match="negative"):
        StoreSpec(IMG, header_bytes=-1)


def test_source_digest_is_the_head_of_the_sha256_of_the_utf8_text():
    assert DIGEST_BYTES == 8 and SOURCE_DIGEST == "source-sha256-64"
    text = "a photo of a café, 東京"
    assert source_digest(text) == hashlib.sha256(text.encode("utf-8")).digest()[:8]
    assert source_digest("dog") == bytes.fromhex("cd6357efdd966de8")  # sha256("dog")[:8]


def test_record_bytes_are_the_documented_layout():
    values = np.array([[[1.0, -4.0], [0.5, 0.125]]], np.float32)  # one (2, 2) record
    fp16 = StoreSpec((2, 2))
    got = encode_records(values, fp16)
    assert got.dtype == np.uint8 and got.shape == (1, 8)
    # little-endian float16, C order: 1.0 = 0x3c00, -4.0 = 0xc400, 0.5 = 0x3800, 0.125 = 0x3000
    assert got[0].tobytes() == bytes.fromhex("003c00c400380030")
    int8 = StoreSpec((2, 2), "int8")
    got = encode_records(values, int8)[0].tobytes()
    # per channel a float32 scale max|x| / 127, then round(x / scale) as int8 (31.75 -> 32)
    scales = np.array([4.0 / 127, 0.5 / 127], "<f4").tobytes()
    assert got == scales + np.array([32, -127, 127, 32], np.int8).tobytes()
    decoded = decode_record(np.frombuffer(got, np.uint8), int8)
    np.testing.assert_allclose(decoded, values[0], atol=4.0 / 127 / 2)


def test_bfloat16_tensor_input(tmp_path):
    new_store(tmp_path)
    keys, values = batch(range(2))
    with StoreWriter(tmp_path, 0) as w:
        w.write(keys, torch.from_numpy(values).bfloat16())
    want = torch.from_numpy(values).bfloat16().float().numpy().astype(np.float16)
    np.testing.assert_array_equal(EmbeddingStore(tmp_path).get("k0001"), want[1])
    with StoreWriter(tmp_path, 0) as w, pytest.raises(TypeError, match="floating point"):
        w.write(["k0002"], torch.ones((1, *IMG), dtype=torch.int32))


def test_int8_round_trip_fidelity_and_zero_channel(tmp_path):
    spec = new_store(tmp_path, TXT, "int8")
    keys, values = batch(range(8), TXT)
    values[:, 2] *= 40.0  # an outlier channel has its own scale
    values[3, 5] = 0.0  # a zero channel decodes to zeros
    with StoreWriter(tmp_path, 0) as w:
        w.write(keys, values)
    store = EmbeddingStore(tmp_path)
    assert spec.record_bytes < StoreSpec(TXT).record_bytes
    for key, value in zip(keys, values):
        got = store.get(key)
        assert got.dtype == np.float32
        assert cosine(got, value.astype(np.float16)) >= 0.9999
    assert not store.get("k0003")[5].any()
    np.testing.assert_array_equal(store.get_many(keys[2:4])[1], store.get("k0003"))
    assert store.get_torch("k0000").dtype == torch.float32


def test_float16_overflow_is_counted_not_silent(tmp_path):
    new_store(tmp_path)
    keys, values = batch(range(2))
    values[1, 0, 0, :2] = [1e5, -7e4]
    with StoreWriter(tmp_path, 0) as w:
        with pytest.raises(Float16OverflowError, match=r"2 values.*k0001.*int8.*allow_overflow"):
            w.write(keys, values)
        assert (tmp_path / "rank0-values.bin").stat().st_size == 0
        with pytest.raises(ValueError, match="NaN"):
            w.write(keys[:1], np.full((1, *IMG), np.nan, np.float32))
    with StoreWriter(tmp_path, 0, allow_overflow=True) as w:
        w.write(keys, values)
        assert w.overflow_count == 2
    got = EmbeddingStore(tmp_path).get("k0001")
    assert got[0, 0, 0] == 65504 and got[0, 0, 1] == -65504 and np.isfinite(got).all()
    spec = StoreSpec(IMG)
    with pytest.raises(Float16OverflowError, match="2 values exceed"):
        encode_records(values, spec)
    clamped = encode_records(values, spec, allow_overflow=True)
    assert decode_record(clamped[1], spec)[0, 0, 0] == 65504


@pytest.mark.parametrize("bad", ["", "a b", "a\nb", "tab\t", "nul\x00"])
def test_bad_keys_are_refused(tmp_path, bad):
    new_store(tmp_path)
    with StoreWriter(tmp_path, 0) as w, pytest.raises(ValueError, match="bad key"):
        w.write([bad], record(0)[None])
    assert (tmp_path / "rank0-keys.txt").stat().st_size == 0
    check_keys(["k0000", "sa_1", "café", "100%25"])
    with pytest.raises(ValueError, match="bad key"):
        check_keys(["fine", bad])
