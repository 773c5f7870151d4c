"""Comma-separated lists as users type them ("16,64,256"): bounded in length, and quoted short in error lines."""

from __future__ import annotations

from ..errors import UserError

MAX_LIST = 1000  # values one comma-separated list may hold
MAX_DIGITS = 18  # an integer option beyond this is no length or count torch can hold (int64)


def list_parts(option: str, text: str) -> list[str]:
    """The stripped parts of a comma-separated list, refused (naming the option and the count) beyond MAX_LIST."""
    parts = [part.strip() for part in str(text).split(",")]
    if len(parts) > MAX_LIST:
        raise UserError(f"{option}: {len(parts):,} values, more than the {MAX_LIST:,} a list may hold")
    return parts


class TooLarge(UserError):
    """An integer of more than MAX_DIGITS digits in `option`'s list: `text`, its digits as typed. `kvbench run`
    reports a length this large against the model's context (`measuring.models.beyond_context`)."""

    def __init__(self, option: str, text: str):
        super().__init__(f"{option}: {shown(text)} is too large (more than {MAX_DIGITS} digits)")
        self.option, self.text = option, text


def shown(text: str, limit: int = 60) -> str:
    """`text` quoted, cut short (with ...) past `limit` characters: error lines stay one line."""
    text = str(text)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def int_list(option: str, text: str) -> list[int]:
    """Parse "16,64,256" into positive integers, naming the option and the bad value otherwise."""
    values = []
    for part in list_parts(option, text):
        digits = part.lstrip("0")  # the digit cap first: int() refuses a string of over 4,300 digits itself
        if not (part.isascii() and part.isdigit()) or not digits:
            raise UserError(f"{option}: {shown(part)} is not a positive integer (in {shown(text)})")
        if len(digits) > MAX_DIGITS:
            raise TooLarge(option, part)
        values.append(int(digits))
    return values


TOKENS_PER_K = 1024  # "32k" tokens: 32,768, the models' own convention (a "128k" context is 131,072 tokens)


def token_list(option: str, text: str) -> list[int]:
    """Parse token counts, "1024,32k,128K", into positive integers: a k suffix counts TOKENS_PER_K tokens."""
    values = []
    for part in list_parts(option, text):
        thousands = part[-1:] in ("k", "K")
        (value,) = int_list(option, part[:-1] if thousands else part)
        values.append(value * TOKENS_PER_K if thousands else value)
    return values
