"""Byte sizes as people write them ("4G", "512m", "10GiB") and as Docker reads them.

Units are binary multiples, as in `docker run --memory 4g`: 1K = 1024 bytes.
"""

from __future__ import annotations

import re

_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


class SizeError(ValueError):
    pass


def parse_size(value: str | int) -> int:
    """Return the number of bytes in `value`; raise SizeError with a hint if it is not a size."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise SizeError(f"{value!r} is not a size: give bytes as an integer or a string such as 4G")
    if isinstance(value, int):
        if value <= 0:
            raise SizeError(f"{value} is not a positive size")
        return value
    match = _SIZE.match(value)
    if not match:
        raise SizeError(
            f"{value!r} is not a size: use a positive number with an optional unit K, M, G or T (e.g. 4G, 512M)"
        )
    number, unit = match.groups()
    size = int(float(number) * _UNITS[unit.lower()])
    if size <= 0:
        raise SizeError(f"{value!r} is not a positive size")
    return size


def format_size(size: int) -> str:
    """The shortest exact spelling of `size` in whole units: 4294967296 -> "4G", 1536 -> "1536"."""
    for unit in ("T", "G", "M", "K"):
        multiple = _UNITS[unit.lower()]
        if size % multiple == 0:
            return f"{size // multiple}{unit}"
    return str(size)
