"""Argument checks that run before anything is sent to Redis."""

from __future__ import annotations

import re
from typing import Any

from .errors import ValidationError

MAX_QTY = 1_000_000_000  # far above any real stock; keeps Lua's doubles exact
MAX_TTL_MS = 30 * 24 * 3600 * 1000
MAX_TIME_MS = 10**13  # year 2286: Lua's cjson keeps 14 significant digits
MAX_LINES = 100

# ':' separates SKU and location in hash fields, so identifiers never contain it.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/+#-]{0,99}")
_OP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}")
_valid_names: set[str] = set()  # names that passed: a set lookup costs a fifth of the regex
_VALID_NAMES_KEPT = 100_000


def name(field: str, value: Any) -> str:
    """A SKU, location or channel name: 1-100 of A-Z a-z 0-9 . _ / + # -, starting alnum."""
    if type(value) is str and value in _valid_names:  # every hold checks its names
        return value
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValidationError(field, f"must be 1-100 characters of A-Za-z0-9._/+#-, got {value!r}")
    if len(_valid_names) < _VALID_NAMES_KEPT:
        _valid_names.add(value)
    return value


def op_id(field: str, value: Any) -> str:
    """An operation or hold id: 1-128 characters of A-Za-z0-9._:+-, starting alnum."""
    if not isinstance(value, str) or not _OP_ID.fullmatch(value):
        raise ValidationError(field, f"must be 1-128 characters of A-Za-z0-9._:+-, got {value!r}")
    return value


def integer(field: str, value: Any, low: int, high: int) -> int:
    """An int (not a bool) within [low, high]."""
    if type(value) is not int or not low <= value <= high:
        raise ValidationError(field, f"must be an integer from {low} to {high}, got {value!r}")
    return value


def qty(field: str, value: Any) -> int:
    """A positive quantity of units."""
    return integer(field, value, 1, MAX_QTY)


def text(field: str, value: Any, max_len: int = 500) -> str:
    if not isinstance(value, str) or len(value) > max_len:
        raise ValidationError(field, f"must be a string of at most {max_len} characters")
    return value
