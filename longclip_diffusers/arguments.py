"""Argparse `type`s for bounded numbers, shared by every command line: a bad value is an argument error that says
what to give ("argument --steps: 0: give a whole number of steps from 1 to 1000"), never a traceback later."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def integer(
    minimum: int, maximum: int | None = None, *, multiple_of: int = 1, requirement: str | None = None
) -> Callable[[str], int]:
    """A whole number from `minimum` (to `maximum`), a multiple of `multiple_of`; `requirement` words the error."""
    if requirement is None:
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f"of at least {minimum}"
        requirement = f"a whole number {bounds}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text}: give {requirement}") from None
        if value < minimum or (maximum is not None and value > maximum) or value % multiple_of:
            raise argparse.ArgumentTypeError(f"{text}: give {requirement}")
        return value

    return parse


def real(
    low: float, high: float = math.inf, *, above: bool = False, below: bool = False, requirement: str | None = None
) -> Callable[[str], float]:
    """A finite number from `low` to `high` (excluding `low` if `above`, `high` if `below`); NaN is never one."""
    if requirement is None:
        lower = f"{'above' if above else 'of at least'} {low:g}"
        upper = f" and {'below' if below else 'at most'} {high:g}" if high < math.inf else ""
        requirement = f"a number {lower}{upper}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        in_range = (value > low if above else value >= low) and (value < high if below else value <= high)
        if not (math.isfinite(value) and in_range):
            raise argparse.ArgumentTypeError(f"{text}: give {requirement}")
        return value

    return parse
