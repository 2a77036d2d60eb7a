"""Strict loading of OWL-ViT / OWLv2 checkpoints in the Hugging Face layout (safetensors, no torch).

A checkpoint is a directory with `config.json`, `model.safetensors` (or sharded
`model-0000x-of-0000y.safetensors` + index) and the CLIP tokenizer files; or a hub id such as
`google/owlv2-base-patch16-ensemble`, fetched with huggingface_hub when the machine is online.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pipelines.owlvit.config import OwlConfig, from_hf_dict
from pipelines.owlvit.model import OwlViT

# Checkpoint tensors the detector does not use (CLIP's image-text head, non-persistent buffers).
IGNORED_KEYS = (
    r"owl(?:vit|v2)\.visual_projection\.weight",
    r"owl(?:vit|v2)\.logit_scale",
    r".*position_ids",
    r"box_bias",
)
_FILES = ["config.json", "*.safetensors", "*.safetensors.index.json", "vocab.json", "merges.txt",
          "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


class CheckpointError(ValueError):
    """An unreadable, incomplete or mismatched checkpoint; the message says what and where."""


@dataclasses.dataclass
class Checkpoint:
    config: OwlConfig
    params: dict[str, Any]
    directory: Path
    fingerprint: str


def resolve(path_or_hub_id: str) -> Path:
    """Local directory as is; `org/name` that is not a local path -> hub snapshot (online only)."""
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the checkpoint directory holding config.json")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", path_or_hub_id):
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path_or_hub_id, allow_patterns=_FILES))
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one readable line
        raise CheckpointError(
            f"{path_or_hub_id!r} is neither a local directory nor a downloadable hub id "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "download it on an online machine and pass the local directory"
        ) from None


def _weight_files(directory: Path) -> list[Path]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        hint = " (only PyTorch .bin weights found: re-save with safe_serialization=True)" if list(
            directory.glob("*.bin")) else ""
        raise CheckpointError(f"no *.safetensors weights in {directory}{hint}")
    return files


def fingerprint(directory: Path, name: str | None = None) -> str:
    """`name@sha256:<16 hex>` over the weight files (in name order), for the annotate manifest."""
    h = hashlib.sha256()
    for f in _weight_files(directory):
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 23), b""):
                h.update(chunk)
    return f"{name or directory.name}@sha256:{h.hexdigest()[:16]}"


def read_config(directory: Path) -> OwlConfig:
    cfg_path = directory / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{cfg_path} is missing: not a Hugging Face checkpoint directory") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {e}") from None
    try:
        return from_hf_dict(cfg)
    except ValueError as e:
        raise CheckpointError(f"{cfg_path}: {e}") from None


def read_tensors(directory: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    tensors: dict[str, np.ndarray] = {}
    for f in _weight_files(directory):
        try:
            tensors.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {f}: {e}") from None
    return tensors


def _hf_key(path: tuple[str, ...], version: int) -> str:
    parts = [re.sub(r"^layers_(\d+)$", r"layers.\1", p) for p in path]
    if parts[0] == "owlvit" and version == 2:  # transformers names the v2 backbone `owlv2`
        parts[0] = "owlv2"
    last = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(parts[-1], parts[-1])
    return ".".join(parts[:-1] + [last])


def _to_flax(path: tuple[str, ...], t: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel" and t.ndim == 2:  # Linear [out, in] -> Dense [in, out]
        return t.T
    if path[-1] == "kernel" and t.ndim == 4:  # Conv [out, in, kh, kw] -> [kh, kw, in, out]
        return t.transpose(2, 3, 1, 0)
    return t


def convert(cfg: OwlConfig, tensors: dict[str, np.ndarray], source: str = "checkpoint") -> dict:
    """HF state dict -> Flax params. Strict: lists every missing, unexpected or misshaped tensor."""
    model = OwlViT(cfg)
    shapes = jax.eval_shape(
        model.init, jax.random.key(0), jnp.zeros((1, cfg.image_size, cfg.image_size, 3)),
        jnp.zeros((1, 2), jnp.int32), jnp.zeros((1,), jnp.int32))["params"]
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    params: dict[str, Any] = {}
    used, missing, misshaped = set(), [], []
    for keypath, leaf in flat:
        path = tuple(k.key for k in keypath)
        key = _hf_key(path, cfg.version)
        if key not in tensors:
            missing.append(key)
            continue
        used.add(key)
        value = _to_flax(path, np.asarray(tensors[key], np.float32))
        if value.shape != leaf.shape:
            misshaped.append(f"{key}: checkpoint {list(tensors[key].shape)}, model expects "
                             f"{list(leaf.shape)} (transposed layout)")
            continue
        node = params
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    ignored = re.compile("|".join(f"(?:{p})" for p in IGNORED_KEYS))
    unexpected = sorted(k for k in tensors if k not in used and not ignored.fullmatch(k))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: " + ", ".join(sorted(missing)))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: " + ", ".join(unexpected))
    if misshaped:
        problems.append(f"{len(misshaped)} with wrong shape: " + "; ".join(misshaped))
    if problems:
        raise CheckpointError(
            f"{source} does not match an OWL-ViT v{cfg.version} model built from its config.json: "
            + " | ".join(problems))
    return params


def load(path_or_hub_id: str) -> Checkpoint:
    """Reads config, weights (strictly) and the fingerprint of a local dir or hub id."""
    directory = resolve(path_or_hub_id)
    cfg = read_config(directory)
    params = convert(cfg, read_tensors(directory), source=str(directory))
    name = path_or_hub_id if not Path(path_or_hub_id).exists() else directory.name
    return Checkpoint(cfg, params, directory, fingerprint(directory, name))
