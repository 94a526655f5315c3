"""Request fingerprints, byte for byte the same in C++, Python and Go.

``fingerprint(data)`` is the raw SHA-256 of the request bytes (what the server
computes from ``BeginRequest.request``). ``fingerprint_parts(*parts)`` hashes
several parts unambiguously: each part is written as its length in decimal,
a colon, and its bytes, e.g. ``b"4:POST10:/v1/orders2:{}"``. The HTTP
middleware uses ``fingerprint_parts(method, path, body)``.
"""

import hashlib
from typing import Union

Bytes = Union[bytes, str]


def _as_bytes(part: Bytes) -> bytes:
    return part.encode("utf-8") if isinstance(part, str) else bytes(part)


def fingerprint(data: Bytes) -> bytes:
    """The raw 32-byte SHA-256 digest of ``data``."""
    return hashlib.sha256(_as_bytes(data)).digest()


def fingerprint_parts(*parts: Bytes) -> bytes:
    """The raw 32-byte SHA-256 of the length-prefixed ``parts``."""
    digest = hashlib.sha256()
    for part in parts:
        data = _as_bytes(part)
        digest.update(str(len(data)).encode("ascii") + b":" + data)
    return digest.digest()
