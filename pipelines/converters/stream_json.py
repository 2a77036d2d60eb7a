"""Incremental reading of one big top-level JSON array (Visual Genome's region_descriptions.json).

`iter_array` yields the array's elements one at a time while reading the file in fixed-size chunks,
with `json.JSONDecoder.raw_decode`: memory holds one chunk plus the element being decoded, never the
whole file (the Visual Genome file is about 700 MB of JSON for 5.4M regions).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO, Any

_WS = " \t\r\n"


class JsonStreamError(ValueError):
    """The input is not one JSON array, or ends inside it."""


def iter_array(f: IO[str], chunk_chars: int = 1 << 20) -> Iterator[Any]:
    """Yields each element of the JSON array that `f` (a text file) holds, reading it by chunks."""
    decoder = json.JSONDecoder()
    buf, pos, eof = "", 0, False

    def fill() -> bool:
        nonlocal buf, pos, eof
        chunk = f.read(chunk_chars)
        buf, pos = buf[pos:] + chunk, 0  # drop what was consumed: the buffer stays small
        eof = not chunk
        return bool(chunk)

    def skip(chars: str) -> None:
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in chars:
                pos += 1
            if pos < len(buf) or not fill():
                return

    skip(_WS)
    if pos >= len(buf) or buf[pos] != "[":
        raise JsonStreamError("expected a JSON array ('[' at the start)")
    pos += 1
    first = True
    while True:
        skip(_WS)
        if pos >= len(buf):
            raise JsonStreamError("the file ends inside the array (truncated?)")
        if buf[pos] == "]":
            return
        if not first:
            if buf[pos] != ",":
                raise JsonStreamError(f"expected ',' between elements, got {buf[pos]!r}")
            pos += 1
            skip(_WS)
        while True:
            try:
                value, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as e:
                if eof or not fill():
                    raise JsonStreamError(f"bad or truncated element: {e.msg}") from None
                continue
            if end == len(buf) and not eof and fill():
                continue  # a number may go on in the next chunk: decode it again whole
            break
        pos = end
        first = False
        yield value
