"""The rule that turns file names and caption ids into store keys (reversible, stable)."""

from __future__ import annotations

import pytest

from stage1.data.keys import decode_key, encode_key, key_problem

EXAMPLES = [
    ("sa_12345", "sa_12345"),  # what existing stores hold: unchanged
    (
        "sha1:14daf9698460c28f0b6308040bbdf1839d235b2d",
        "sha1:14daf9698460c28f0b6308040bbdf1839d235b2d",
    ),
    ("caf\u00e9", "caf\u00e9"),  # printable non-ASCII: unchanged
    ("my photo", "my%20photo"),
    ("100%", "100%25"),
    ("my%20photo", "my%2520photo"),  # '%' itself is escaped, so decoding is unambiguous
    ("a\tb\nc\r", "a%09b%0Ac%0D"),
    ("nb\u00a0sp", "nb%C2%A0sp"),  # a non-ASCII space: its UTF-8 bytes
    ("zero\u200bwidth", "zero%E2%80%8Bwidth"),  # a format character (not printable)
    ("bell\x07", "bell%07"),
]


@pytest.mark.parametrize(("name", "key"), EXAMPLES)
def test_examples_and_round_trip(name: str, key: str) -> None:
    assert encode_key(name) == key
    assert decode_key(key) == name
    assert key_problem(key) is None


def test_bytes_that_are_not_utf8_are_escaped_one_by_one() -> None:
    assert encode_key(b"caf\xe9") == "caf%E9"
    assert encode_key(b"caf\xc3\xa9") == "caf\u00e9"  # the same name in UTF-8
    assert decode_key("caf%E9").encode("utf-8", "surrogateescape") == b"caf\xe9"
    assert encode_key("caf\udce9") == "caf%E9"  # how os.listdir spells the byte 0xE9


def test_key_problem_names_what_the_store_rejects() -> None:
    assert key_problem("") is not None
    assert key_problem("my photo") is not None  # not encoded: the store cannot hold it
