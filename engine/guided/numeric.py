"""Bounded JSON numbers as automaton ASTs: integers in [lo, hi] exactly (`minimum`, `maximum`,
`exclusiveMinimum`, `exclusiveMaximum`), and numbers between integer bounds (any fraction strictly
inside, the bound itself only with a zero fraction). Integers have at most 19 digits, as unbounded
ones do in `json_schema.INTEGER`."""

from __future__ import annotations

import math
from typing import Any

from .automaton import cset, lit

MAX_DIGITS = 19
MAX_ABS = 10 ** MAX_DIGITS - 1
DIGITS = cset((48, 57))
FRACTION = ("seq", [lit("."), ("rep", DIGITS, 1, 15)])
ZERO_FRACTION = ("rep", ("seq", [lit("."), ("rep", lit("0"), 1, 15)]), 0, 1)
NOTHING = ("alt", [("cset", [])])


def _same_length(x: str, y: str) -> tuple:
    """Digit strings of len(x) == len(y) between x and y (leading zeros allowed: inner positions)."""
    if len(x) == 1:
        return cset((ord(x), ord(y)))
    n = len(x) - 1
    if x[1:] == "0" * n and y[1:] == "9" * n:  # a full block: keeps the size O(digits^2), not 3^digits
        return ("seq", [cset((ord(x[0]), ord(y[0]))), ("rep", DIGITS, n, n)])
    if x[0] == y[0]:
        return ("seq", [lit(x[0]), _same_length(x[1:], y[1:])])
    parts = [("seq", [lit(x[0]), _same_length(x[1:], "9" * n)])]
    if ord(x[0]) + 1 <= ord(y[0]) - 1:
        parts.append(("seq", [cset((ord(x[0]) + 1, ord(y[0]) - 1)), ("rep", DIGITS, n, n)]))
    parts.append(("seq", [lit(y[0]), _same_length("0" * n, y[1:])]))
    return ("alt", parts)


def natural_range(a: int, b: int) -> tuple:
    """Decimal forms (no leading zeros) of the integers a..b, 0 <= a."""
    if a > b:
        return NOTHING
    parts = []
    for n in range(len(str(a)), len(str(b)) + 1):
        lo, hi = max(a, 10 ** (n - 1) if n > 1 else 0), min(b, 10 ** n - 1)
        if lo <= hi:
            parts.append(_same_length(str(lo), str(hi)))
    return ("alt", parts)


def integer_range(lo: int | None, hi: int | None) -> tuple:
    """JSON integers in [lo, hi] (None: unbounded, up to 19 digits)."""
    lo = -MAX_ABS if lo is None else max(lo, -MAX_ABS)
    hi = MAX_ABS if hi is None else min(hi, MAX_ABS)
    parts = []
    if lo < 0:  # negatives: "-" and the magnitudes max(1, -hi) .. -lo
        parts.append(("seq", [lit("-"), natural_range(max(1, -hi), -lo)]))
    if hi >= 0:
        parts.append(natural_range(max(lo, 0), hi))
    return ("alt", parts) if parts else NOTHING


def number_range(lo: int | None, hi: int | None) -> tuple:
    """JSON numbers (no exponent) in [lo, hi] for integer bounds: an integer part strictly inside
    takes any fraction, one equal to a bound only a zero fraction."""
    lo = -MAX_ABS if lo is None else lo
    hi = MAX_ABS if hi is None else hi
    parts = []
    # integer parts whose every fraction stays inside: [lo, hi-1] for non-negative values,
    # magnitudes [0, -lo-1] for negative ones ("-k.f" = -(k + 0.f))
    if hi - 1 >= max(lo, 0):
        parts.append(("seq", [natural_range(max(lo, 0), hi - 1), ("rep", FRACTION, 0, 1)]))
    if lo < 0 and min(-lo - 1, MAX_ABS) >= max(0, -hi):
        parts.append(("seq", [lit("-"), natural_range(max(0, -hi), min(-lo - 1, MAX_ABS)), ("rep", FRACTION, 0, 1)]))
    # the bounds themselves, with a zero fraction at most
    for bound in {lo, hi}:
        if lo <= bound <= hi and abs(bound) <= MAX_ABS:
            parts.append(("seq", [lit(str(bound)), ZERO_FRACTION]))
    return ("alt", parts) if parts else NOTHING


def bounds(schema: dict, integer: bool, error) -> tuple[int | None, int | None] | None:
    """(lo, hi) from the schema's range keywords, or None when it has none. Integer types take any
    numeric bound (rounded inward); number types need integer-valued inclusive bounds."""
    keys = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
    if not any(k in schema for k in keys):
        return None
    lo: Any = None
    hi: Any = None
    for k in keys:
        v = schema.get(k)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise error(f"{k} must be a finite number")
        if not integer and (k.startswith("exclusive") or v != int(v)):
            raise error(f"{k}={v}: number ranges are supported with integer-valued minimum / maximum only")
        if k == "minimum":
            b = math.ceil(v)
            lo = b if lo is None else max(lo, b)
        elif k == "exclusiveMinimum":
            b = math.floor(v) + 1
            lo = b if lo is None else max(lo, b)
        elif k == "maximum":
            b = math.floor(v)
            hi = b if hi is None else min(hi, b)
        else:
            b = math.ceil(v) - 1
            hi = b if hi is None else min(hi, b)
    if lo is not None and hi is not None and lo > hi:
        raise error("the numeric range is empty")
    return lo, hi
