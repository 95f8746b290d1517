"""Random (version 4) UUIDs for cards, suggestions and request ids, from the
operating system's CSPRNG drawn in batches.

Why: ``uuid.uuid4()`` makes one ``getrandom`` system call per id, and a system
call releases the GIL. Under gunicorn's threaded workers a thread that releases
the GIL in the middle of a request waits for it behind another thread's whole
request, whose data then evicts its own from the CPU cache: a card-rich answer
paid for that several times. One call per BATCH ids keeps the same randomness
source. The batch is dropped in a forked child, so that two workers never hand
out the same ids."""
from __future__ import annotations

import os
import uuid

BATCH = 256
_pool: list[bytes] = []
os.register_at_fork(after_in_child=_pool.clear)


def _draw() -> bytes:
    while True:
        try:
            return _pool.pop()  # atomic under the GIL: threads never share an id
        except IndexError:
            raw = os.urandom(16 * BATCH)
            _pool.extend(raw[i:i + 16] for i in range(0, len(raw), 16))


def new_uuid() -> str:
    """A random UUID, e.g. '0c8f...-4...'."""
    return str(uuid.UUID(bytes=_draw(), version=4))


def new_hex_id() -> str:
    """A random UUID as 32 hex digits (request ids)."""
    return uuid.UUID(bytes=_draw(), version=4).hex
