"""big_vision-compatible ViT `.npz` checkpoints: strict loading and encoder export.

Loading also reads a transformers export directory (model/hf_siglip.py), so both export formats
initialise a run (`init.encoder_npz`) or a frozen-encoder evaluation the same way.

A big_vision ViT checkpoint is an `.npz` whose keys are the parameter paths joined by "/"
("Transformer/encoderblock_0/LayerNorm_0/scale", "embedding/kernel", ...). Loading is strict like
big_vision's `common.merge_params`: every model parameter must come from the file and every file
entry must be used, unless a `dont_load` regex (full match on the "/"-joined name) says otherwise;
the error lists all offending names. The position embedding is resampled bilinearly when the grid
differs (big_vision's `resample_posemb`), so a 224-px checkpoint seeds a 112-px or 384-px model.

Paths may be local or cloud URLs (etils.epath).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np
import scipy.ndimage
from etils import epath
from flax import traverse_util
from jax.experimental import multihost_utils


def flatten(tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Nested dict -> {"a/b/c": array}."""
    flat = traverse_util.flatten_dict(dict(tree), sep="/")
    return {k: np.asarray(v) for k, v in flat.items()}


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"a/b/c": array} -> nested dict."""
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def read_npz(path: str, subtree: str | None = None) -> dict[str, np.ndarray]:
    """Reads a flat `.npz`. `subtree` (e.g. "params/img" for a SigLIP file) keeps only keys under
    that prefix, with the prefix removed."""
    p = epath.Path(path)
    if not p.exists():
        raise FileNotFoundError(f"ViT checkpoint {path} does not exist: check the path")
    with np.load(io.BytesIO(p.read_bytes()), allow_pickle=False) as z:
        flat = {k: z[k] for k in z.files}
    if subtree:
        prefix = subtree.rstrip("/") + "/"
        flat = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
        if not flat:
            raise ValueError(f"{path} has no keys under {prefix!r}")
    return flat


def write_npz(flat: Mapping[str, Any], path: str) -> None:
    """Writes {name: array} as an uncompressed `.npz` (readable with plain np.load)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in flat.items()})
    p = epath.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(buf.getvalue())


def fix_old_names(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames layouts older big_vision/ViT releases used (posemb inside Transformer; [cls] posemb
    stored as an extra first row), as big_vision's `fix_old_checkpoints` does."""
    flat = dict(flat)
    for old in ("Transformer/posembed_input/pos_embedding", "Transformer/pos_embedding"):
        if old in flat:
            flat["pos_embedding"] = flat.pop(old)
    pe = flat.get("pos_embedding")
    if pe is not None and _is_square(pe.shape[1] - 1) and not _is_square(pe.shape[1]):
        # Old files add posemb after prepending [cls]: fold its row into the token.
        if "cls" in flat:
            flat["cls"] = flat["cls"] + pe[:, :1]
        flat["pos_embedding"] = pe[:, 1:]
    return flat


def _is_square(n: int) -> bool:
    return n > 0 and int(round(np.sqrt(n))) ** 2 == n


def resample_posemb(old: np.ndarray, new_grid: tuple[int, int],
                    old_grid: tuple[int, int] | None = None) -> np.ndarray:
    """Bilinear resize of a grid posemb float[1, h*w, D] -> float[1, H*W, D] (corners aligned,
    scipy.ndimage.zoom order 1, exactly as big_vision). `old_grid` defaults to a square grid."""
    old = np.asarray(old)
    if old_grid is None:
        side = int(round(np.sqrt(old.shape[1])))
        if side * side != old.shape[1]:
            raise ValueError(f"posemb with {old.shape[1]} positions is not a square grid: "
                             "pass old_grid=(h, w)")
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return old
    grid = old.reshape(old_grid[0], old_grid[1], -1)
    zoom = (new_grid[0] / old_grid[0], new_grid[1] / old_grid[1], 1)
    grid = scipy.ndimage.zoom(grid, zoom, order=1)
    return grid.reshape(1, new_grid[0] * new_grid[1], -1).astype(old.dtype)


def _listing(title: str, names: Iterable[str]) -> str:
    names = sorted(names)
    return f"{title} ({len(names)}):\n" + "\n".join(f"  {n}" for n in names) if names else ""


def merge_strict(loaded: Mapping[str, np.ndarray], init: Mapping[str, Any],
                 dont_load: Iterable[str] = ()) -> dict[str, Any]:
    """Returns `init` (nested params) with every value replaced by `loaded` (flat names).

    Names matching a `dont_load` regex keep their init value (and may be absent from `loaded`);
    a loaded entry matching one is ignored. Raises ValueError listing every name that is missing,
    unexpected or of the wrong shape. `pos_embedding` of another grid size is resampled.
    """
    patterns = [re.compile(p) for p in dont_load]

    def skipped(name: str) -> bool:
        return any(p.fullmatch(name) for p in patterns)

    init_flat = traverse_util.flatten_dict(dict(init), sep="/")
    missing = {k for k in init_flat if k not in loaded and not skipped(k)}
    unexpected = {k for k in loaded if k not in init_flat and not skipped(k)}
    merged, bad_shape = {}, []
    for name, init_val in init_flat.items():
        if name not in loaded or skipped(name):
            merged[name] = init_val
            continue
        value = np.asarray(loaded[name])
        if name == "pos_embedding" and value.shape != tuple(init_val.shape):
            value = _resample_to(value, tuple(init_val.shape))
        if value.shape != tuple(init_val.shape):
            bad_shape.append(f"{name}: checkpoint {value.shape} vs model {tuple(init_val.shape)}")
            continue
        merged[name] = value.astype(init_val.dtype)
    if missing or unexpected or bad_shape:
        parts = [_listing("in the model but not in the checkpoint", missing),
                 _listing("in the checkpoint but not in the model", unexpected),
                 _listing("shape mismatch", bad_shape)]
        raise ValueError("ViT checkpoint does not match the model (skip names with dont_load "
                         "regexes):\n" + "\n".join(p for p in parts if p))
    return traverse_util.unflatten_dict(merged, sep="/")


def _resample_to(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if len(value.shape) != 3 or value.shape[-1] != shape[-1] or not _is_square(shape[1]):
        return value  # let the shape check report it
    side = int(round(np.sqrt(shape[1])))
    return resample_posemb(value, (side, side))


def read_encoder(path: str, subtree: str | None = None) -> dict[str, np.ndarray]:
    """Flat big_vision names from either export format: a `.npz`, or a directory holding a
    transformers `SiglipVisionModel` (config.json + model.safetensors, model/hf_siglip.py)."""
    p = epath.Path(path)
    if p.is_dir():
        from model import hf_siglip

        if not (p / hf_siglip.WEIGHTS).exists():
            raise FileNotFoundError(f"{path} is a directory without {hf_siglip.WEIGHTS}: pass an "
                                    "encoder .npz or a transformers export directory")
        return hf_siglip.read(path)
    return read_npz(path, subtree)


def _drop_fixed_posemb(flat: dict[str, np.ndarray], init_params: Mapping[str, Any]
                       ) -> dict[str, np.ndarray]:
    """A model with a fixed sin/cos position embedding has no pos_embedding parameter; a file
    that stores those very values (a transformers export, which must) loads into it."""
    from model.vit import posemb_sincos_2d

    pe = flat.get("pos_embedding")
    if pe is None or "pos_embedding" in init_params or not _is_square(pe.shape[1]):
        return flat
    side = int(round(np.sqrt(pe.shape[1])))
    if np.allclose(pe, posemb_sincos_2d(side, side, pe.shape[-1]), atol=1e-6):
        flat = {k: v for k, v in flat.items() if k != "pos_embedding"}
    return flat


def load_vit_params(path: str, init_params: Mapping[str, Any], dont_load: Iterable[str] = (),
                    subtree: str | None = None) -> dict[str, Any]:
    """ViT params (the "img" subtree) from a big_vision `.npz` or a transformers export directory
    (read_encoder), strictly merged into `init_params`.

    Example: `params["img"] = load_vit_params("vit_b16.npz", params["img"], dont_load=["head/.*"])`.
    """
    flat = _drop_fixed_posemb(fix_old_names(read_encoder(path, subtree)), init_params)
    return merge_strict(flat, init_params, dont_load)


def host_array(x: Any) -> np.ndarray:
    """A numpy copy of the whole array, dtype kept; arrays sharded across hosts are all-gathered
    first (collective: every process must call it, for the same arrays in the same order)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def encoder_arrays(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The encoder (`params["img"]`, or a bare ViT tree) as flat big_vision names -> float32 host
    arrays: what every export format writes. Multi-host: every process must call it (the gather
    is collective)."""
    vit = params["img"] if "img" in params else params
    return {k: np.asarray(host_array(v), np.float32)
            for k, v in traverse_util.flatten_dict(dict(vit), sep="/").items()}


def export_encoder(params: Mapping[str, Any], path: str) -> dict[str, np.ndarray]:
    """Writes the encoder as a standalone big_vision `.npz` and returns the flat dict written.
    Multi-host: every process must call it; only process 0 writes."""
    flat = encoder_arrays(params)
    if jax.process_index() == 0:
        write_npz(flat, path)
    return flat
