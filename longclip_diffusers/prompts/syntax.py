"""A1111 prompt-weighting syntax: `(word)`, `(word:1.3)`, `[word]`, `\\(` and `BREAK`, parsed to (text, weight) pieces.

Pure text, no tensors: importing this module imports neither torch nor transformers (as compel's parser).
"""

from __future__ import annotations

import re

BREAK = "BREAK"
EMPHASIS = 1.1  # what `(word)` multiplies and `[word]` divides by, as in A1111
# A token's weight (an explicit `(word:w)`, or the product of nested groups) must lie in [0, MAX_WEIGHT]. A1111
# prompts use about 0..2; past 10 a weight is a typo (`(cat:13)` for 1.3, `(cat:1000000000)`) that would swamp
# the conditioning. Negative weights are refused: they invert a token's states, which never means "not this".
MAX_WEIGHT = 10.0

_ATTENTION_TOKEN = re.compile(
    r"""
    \\[()\[\]\\]            # an escaped bracket or backslash: literal text
    | \\                    # a lone backslash: literal
    | \( | \[               # open an emphasis group
    | :\s*([+-]?[\d.]+)\s*\)  # close a group with an explicit weight, `(words:1.3)`
    | \) | \]               # close a group
    | [^\\()\[\]:]+         # plain text
    | :                     # a colon that is not part of a weight
    """,
    re.VERBOSE,
)
_BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*")


def parse_weighted_prompt(prompt: str) -> list[tuple[str, float]]:
    """Split a prompt written in A1111 syntax into (text, weight) pieces.

    `(text)` x1.1, `((text))` x1.21, `(text:1.3)` x1.3, `[text]` /1.1, `\\(` a literal bracket, `BREAK` (upper
    case, a word of its own) a window break, returned as `("BREAK", -1.0)`. Unclosed groups apply to the rest.
    A `BREAK` inside a group still breaks (A1111 scales its marker, which turns it into the word "break" with a
    negative weight). Every weight must lie in [0, MAX_WEIGHT], nested products included; others raise ValueError.
    """
    pieces: list[list] = []
    open_round: list[int] = []
    open_square: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            if piece[0] != BREAK or piece[1] >= 0:
                piece[1] *= factor

    for match in _ATTENTION_TOKEN.finditer(prompt):
        text, weight = match.group(0), match.group(1)
        if text.startswith("\\"):
            pieces.append([text[-1], 1.0])
        elif text == "(":
            open_round.append(len(pieces))
        elif text == "[":
            open_square.append(len(pieces))
        elif weight is not None and open_round:
            start = open_round.pop()
            group = "".join(piece[0] for piece in pieces[start:] if piece[1] >= 0)
            scale(start, _parse_weight(weight, group))
        elif text == ")" and open_round:
            scale(open_round.pop(), EMPHASIS)
        elif text == "]" and open_square:
            scale(open_square.pop(), 1 / EMPHASIS)
        else:
            for i, part in enumerate(_BREAK_WORD.split(text)):
                if i:
                    pieces.append([BREAK, -1.0])
                pieces.append([part, 1.0])
    for start in open_round:
        scale(start, EMPHASIS)
    for start in open_square:
        scale(start, 1 / EMPHASIS)

    merged: list[tuple[str, float]] = []
    for text, weight in pieces:
        if text == "" and weight >= 0:
            continue
        if merged and weight >= 0 and merged[-1][1] == weight and merged[-1][0] != BREAK:
            merged[-1] = (merged[-1][0] + text, weight)
        else:
            merged.append((text, weight))
    for text, weight in merged:
        if weight > MAX_WEIGHT:
            raise ValueError(
                f"{text.strip()!r} gets weight {weight:.4g} from nested groups; the product of nested weights must "
                f"lie between 0 and {MAX_WEIGHT:g}: remove a bracket level or lower a weight."
            )
    return merged or [("", 1.0)]


def _parse_weight(weight: str, group: str) -> float:
    written = f"({group.strip()}:{weight})"
    try:
        value = float(weight)
    except ValueError:
        raise ValueError(f"{written}: {weight!r} is not a valid weight; write it like (words:1.3).") from None
    if not 0 <= value <= MAX_WEIGHT:  # also refuses inf (a weight of 400 digits)
        raise ValueError(
            f"{written}: weight {weight} is outside the range 0 to {MAX_WEIGHT:g} that prompt weighting accepts "
            "(A1111 prompts use about 0.5 to 1.5; for what you do not want, use the negative prompt, not a weight "
            "below 0)."
        )
    return value
