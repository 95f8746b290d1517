"""JSON text as bytes: orjson, and the standard library where orjson cannot write a value (an integer
past 64 bits, which the plain-JSON decode path reads from a request), with the same output shape:
compact, UTF-8, keys in their order or sorted."""
from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any, sort_keys: bool = False) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else None)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys).encode()
