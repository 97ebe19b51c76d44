"""Store keys from file names and caption ids: one reversible, stable rule for every phase.

The embedding store holds keys that are non-empty, printable and free of whitespace (one per
line of ``rank{R}-keys.txt``). A name is turned into a key by percent-encoding every character
the store cannot hold, and ``%`` itself:

* the name is taken as bytes: a file name's raw bytes (``os.fsencode``: a byte that is not UTF-8
  is the lone surrogate ``os.listdir`` gives it), a caption id's UTF-8;
* each character that is printable, not whitespace and not ``%`` is kept as it is;
* every other character becomes ``%XX`` per byte (upper-case hex): ``my photo`` -> ``my%20photo``,
  ``100%`` -> ``100%25``, the Latin-1 name ``caf\\xe9`` -> ``caf%E9``, a tab -> ``%09``.

Names the store could already hold (``sa_12345``, ``sha1:...``, ``café``) map to themselves, so
stores written before this rule keep their keys, except for names holding ``%`` (now ``%25``)
and caption ids that are not UTF-8 (once decoded with U+FFFD, now encoded byte by byte).
:func:`decode_key` gives the name back. The listing
functions (:func:`stage1.data.sa1b.list_sa1b`, :func:`stage1.data.recap_datacomp.iter_captions`)
apply the rule, so export and training see the same keys. A key the store still rejects (the
check is the store's own) is skipped, counted and named in the log, like an unreadable image.
"""

from __future__ import annotations

import re

from stage1.common.errors import UserError
from stage1.store import check_keys

_PLAIN = re.compile(r"[!-$&-~]+")  # printable ASCII without space and '%': always a valid key
_ESCAPE = re.compile(r"%([0-9A-F]{2})")


def _keep(ch: str) -> bool:
    return ch != "%" and ch.isprintable() and not ch.isspace()


def encode_key(name: str | bytes) -> str:
    """The store key of ``name`` (a file stem or a caption id); see the module docstring."""
    if isinstance(name, str):
        if _PLAIN.fullmatch(name):
            return name
        name = name.encode("utf-8", "surrogateescape")
    text = bytes(name).decode("utf-8", "surrogateescape")
    return "".join(
        ch if _keep(ch) else "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogateescape"))
        for ch in text
    )


def decode_key(key: str) -> str:
    """The name :func:`encode_key` made ``key`` from; bytes that are not UTF-8 come back as lone
    surrogates (``os.fsencode`` of the result gives a file name's raw bytes)."""
    raw = bytearray()
    pos = 0
    for match in _ESCAPE.finditer(key):
        raw += key[pos : match.start()].encode("utf-8", "surrogateescape")
        raw.append(int(match.group(1), 16))
        pos = match.end()
    raw += key[pos:].encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "surrogateescape")


def _store_check(key: str) -> str | None:
    try:
        check_keys([key])
    except (ValueError, UserError) as err:
        return str(err)
    return None


def key_problem(key: str) -> str | None:
    """Why the store would reject ``key`` (e.g. an empty one), or ``None`` if it accepts it."""
    return None if _PLAIN.fullmatch(key) else _store_check(key)
