"""A pickle reader that admits only plain data, for the official RefCOCO `refs(*).p` files.

The official refs files are Python pickles. Unpickling runs whatever callables the file names
(`os.system`, `subprocess.Popen`, ...), so a downloaded or tampered file could execute code. This
reader refuses every global except a short allow-list of inert builtins, which is all that a list of
dicts of strings, numbers and lists needs (protocol 0-5 build those with opcodes, not globals).
"""

from __future__ import annotations

import io
import pickle
from typing import Any

# Globals a plain-data pickle may legitimately reference (Python 2 pickles name the module
# `__builtin__`). Nothing here can run code when called with pickled arguments.
_ALLOWED = {
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("__builtin__", "set"),
    ("__builtin__", "frozenset"),
    # Protocols < 3 store Python 3 bytes as _codecs.encode(text, "latin1"): it only turns a
    # string into bytes.
    ("_codecs", "encode"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose find_class refuses anything outside _ALLOWED."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: this reader only admits plain containers "
            "and scalars (the RefCOCO refs files need nothing else)"
        )


def safe_loads(data: bytes) -> Any:
    """Unpickles plain data only. Python 2 byte strings are decoded as UTF-8 (the refs files
    were written by Python 2)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="utf-8").load()


def safe_load(path) -> Any:
    """Reads and unpickles a file (local path or etils.epath-compatible cloud path)."""
    from etils import epath

    return safe_loads(epath.Path(path).read_bytes())
