"""Shard globs -> shard paths: the one glob expansion of the tokenizer trainer and the loader.

Standard library and etils only (no Beam, no JAX), so every stage can import it.
"""

from __future__ import annotations

from collections.abc import Sequence


class NoShards(ValueError):
    """A glob list that is empty, or a glob that matches no file."""


def expand(patterns: str | Sequence[str]) -> list[str]:
    """Globs (local or cloud; a comma-separated string or a list) -> shard paths.

    Each glob's matches are sorted; globs keep their order. A pattern without a wildcard is a
    path that must exist.
    """
    from etils import epath

    if isinstance(patterns, str):
        patterns = [p for p in patterns.split(",") if p.strip()]
    if not patterns:
        raise NoShards("no shard glob given (use one like 'DIR/*.array_record')")
    out: list[str] = []
    for pattern in patterns:
        pattern = pattern.strip()
        cut = min((pattern.find(c) for c in "*?[" if c in pattern), default=-1)
        if cut < 0:
            found = [pattern] if epath.Path(pattern).exists() else []
        else:
            # Glob from the last directory without a wildcard: epath globs cloud paths too.
            slash = pattern.rfind("/", 0, cut)
            root = epath.Path(pattern[:slash] if slash > 0 else ("/" if slash == 0 else "."))
            rest = pattern[slash + 1 :]
            found = [str(p) for p in root.glob(rest)] if root.exists() else []
        if not found:
            raise NoShards(f"no shards match {pattern!r}")
        out.extend(sorted(found))
    return out
