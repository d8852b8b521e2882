"""Duplicate keys in a JSON body: refused, not silently last-wins.

The JSON parser keeps the last of repeated keys and does not say so. A body's keys are counted
cheaply instead: in compact JSON every key ends in `":`, so when the body has no whitespace after
a quote and as many `":` as the parsed request has keys, no key repeats. Anything else (pretty
JSON, an escaped quote before a colon inside a string, a repeated key) is parsed a second time,
keeping every key, to name each repeated one.
"""

from __future__ import annotations

import json
from typing import Any

from service.errors import ValidationFailed, field_path

WHITESPACE_AFTER_QUOTE = (b'" ', b'"\n', b'"\r', b'"\t')


def refuse_repeated_keys(body: bytes, keys: int) -> None:
    """ValidationFailed naming each key given twice in its object, when `body` (valid JSON whose
    objects, once parsed, hold `keys` keys in all) repeats one."""
    if body.count(b'":') == keys and not any(w in body for w in WHITESPACE_AFTER_QUOTE):
        return
    repeated = repeated_keys(body)
    if repeated:
        raise ValidationFailed(
            "a key is given more than once in one object",
            [(path, "given more than once") for path in repeated],
        )


def repeated_keys(body: bytes) -> list[str]:
    """The paths (`candidates[3].item`) of keys given more than once in their object."""
    found: list[str] = []
    _walk(json.loads(body, object_pairs_hook=_Object), (), found)
    return found


class _Object(dict[str, Any]):
    """A parsed JSON object that remembers which of its keys were repeated."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.repeated: list[str] = []
        if len(self) != len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen and key not in self.repeated:
                    self.repeated.append(key)
                seen.add(key)


def _walk(value: Any, loc: tuple[int | str, ...], found: list[str]) -> None:
    if isinstance(value, _Object):
        found.extend(field_path((*loc, key)) for key in value.repeated)
        for key, item in value.items():
            _walk(item, (*loc, key), found)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _walk(item, (*loc, index), found)
