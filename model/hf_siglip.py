"""Our ViT encoder as a transformers `SiglipVisionModel` directory, and back.

    write(flat, model_config, "out/transformers")   # config.json, model.safetensors,
                                                     # preprocessor_config.json
    flat = read("out/transformers")                  # the big_vision names again

`flat` is `vit_weights.encoder_arrays(params)`: the same arrays the big_vision `.npz` export
writes, so both formats come from one gather. SigLIP's vision tower is our ViT exactly when the
ViT has no [cls] token and no pooling head: patch conv, position embedding added to the patch
tokens (ours, fixed sin/cos or learned, is stored as values: SigLIP's is a table), pre-LN blocks
with our layer-norm epsilon and tanh-approximated GELU (`gelu_pytorch_tanh`), then a final layer
norm (`post_layernorm`, our `encoder_norm`). `last_hidden_state` is our encoder output; pooling
"gap" is its mean over tokens. A "map" head is not exported (SigLIP's head keeps a packed torch
MultiheadAttention of its own) and a "tok" [cls] token has no place in SigLIP: both are refused.

Only numpy and safetensors are needed to write or read; torch/transformers only to load it.
Weights are written under the `vision_model.` prefix, the layout of SigLIP checkpoints on the
Hub, which transformers 4.x and 5.x both load into `SiglipVisionModel`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from etils import epath

from model.vit import GELU_APPROXIMATE, LN_EPSILON, posemb_sincos_2d

WEIGHTS = "model.safetensors"
PREFIX = "vision_model."
EXPORTABLE_POOLS = ("none", "gap")
# transformers' names of our GELU: the tanh approximation, or the exact erf form.
HIDDEN_ACT = "gelu_pytorch_tanh" if GELU_APPROXIMATE else "gelu"


class ExportError(ValueError):
    """The encoder has a part SigLIP's layout cannot hold."""


def _ln(ours: str, theirs: str) -> list[tuple[str, str, str]]:
    return [(f"{ours}/scale", f"{theirs}.weight", "vec"), (f"{ours}/bias", f"{theirs}.bias", "vec")]


def _names(depth: int) -> list[tuple[str, str, str]]:
    """(big_vision name, SigLIP name without prefix, how the array is laid out)."""
    out = [("embedding/kernel", "embeddings.patch_embedding.weight", "conv"),
           ("embedding/bias", "embeddings.patch_embedding.bias", "vec"),
           ("pos_embedding", "embeddings.position_embedding.weight", "posemb"),
           *_ln("Transformer/encoder_norm", "post_layernorm")]
    for i in range(depth):
        ours, theirs = f"Transformer/encoderblock_{i}", f"encoder.layers.{i}"
        attn = f"{ours}/MultiHeadDotProductAttention_0"
        out += _ln(f"{ours}/LayerNorm_0", f"{theirs}.layer_norm1")
        out += _ln(f"{ours}/LayerNorm_1", f"{theirs}.layer_norm2")
        for a, b in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            out += [(f"{attn}/{a}/kernel", f"{theirs}.self_attn.{b}.weight", "qkv"),
                    (f"{attn}/{a}/bias", f"{theirs}.self_attn.{b}.bias", "qkv_bias")]
        out += [(f"{attn}/out/kernel", f"{theirs}.self_attn.out_proj.weight", "out"),
                (f"{attn}/out/bias", f"{theirs}.self_attn.out_proj.bias", "vec")]
        for j, fc in ((0, "fc1"), (1, "fc2")):
            out += [(f"{ours}/MlpBlock_0/Dense_{j}/kernel", f"{theirs}.mlp.{fc}.weight", "dense"),
                    (f"{ours}/MlpBlock_0/Dense_{j}/bias", f"{theirs}.mlp.{fc}.bias", "vec")]
    return out


def _to_torch(x: np.ndarray, layout: str) -> np.ndarray:
    if layout == "conv":  # [P, P, 3, D] (HWIO) -> [D, 3, P, P] (OIHW)
        return x.transpose(3, 2, 0, 1)
    if layout == "posemb":  # [1, N, D] -> [N, D]
        return x[0]
    if layout == "qkv":  # [D, H, hd] -> [H*hd, D]
        return x.reshape(x.shape[0], -1).T
    if layout == "qkv_bias":  # [H, hd] -> [H*hd]
        return x.reshape(-1)
    if layout == "out":  # [H, hd, D] -> [D, H*hd]
        return x.reshape(-1, x.shape[-1]).T
    if layout == "dense":  # [in, out] -> [out, in]
        return x.T
    return x


def _from_torch(x: np.ndarray, layout: str, heads: int) -> np.ndarray:
    if layout == "conv":
        return x.transpose(2, 3, 1, 0)
    if layout == "posemb":
        return x[None]
    if layout == "qkv":
        return x.T.reshape(x.shape[1], heads, -1)
    if layout == "qkv_bias":
        return x.reshape(heads, -1)
    if layout == "out":
        return x.T.reshape(heads, -1, x.shape[0])
    if layout == "dense":
        return x.T
    return x


def siglip_config(flat: Mapping[str, np.ndarray], model_config: Any) -> dict[str, Any]:
    """The `SiglipVisionConfig` fields (config.json) of our encoder; ExportError where SigLIP
    cannot represent it exactly."""
    c = model_config
    if c.pool_type not in EXPORTABLE_POOLS:
        raise ExportError(f"pool_type {c.pool_type!r} has no exact SigLIP layout: only "
                          f"{EXPORTABLE_POOLS} export to transformers (use the .npz export)")
    depth = sum(1 for k in flat if k.endswith("/LayerNorm_0/scale") and "encoderblock_" in k)
    return {
        "architectures": ["SiglipVisionModel"],
        "model_type": "siglip_vision_model",
        "hidden_size": int(c.width),
        "intermediate_size": int(c.mlp_dim or 4 * c.width),
        "num_hidden_layers": depth,
        "num_attention_heads": int(c.num_heads),
        "num_channels": 3,
        "image_size": int(c.image_size),
        "patch_size": int(c.patch_size),
        "hidden_act": HIDDEN_ACT,
        "layer_norm_eps": LN_EPSILON,
        "attention_dropout": 0.0,
        "vision_use_head": False,
        "dtype": "float32",
    }


def preprocessor_config(image_size: int) -> dict[str, Any]:
    """SiglipImageProcessor settings giving our input range: RGB resized to a square, then
    x / 255 * 2 - 1 (mean 0.5, std 0.5). Its resize is Pillow's bilinear; our loader's is
    OpenCV's, so pixels can differ by a little after resizing (see the model card)."""
    return {"image_processor_type": "SiglipImageProcessor", "do_resize": True,
            "size": {"height": image_size, "width": image_size}, "resample": 2,
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_convert_rgb": True}


def to_state_dict(flat: Mapping[str, np.ndarray], model_config: Any) -> dict[str, np.ndarray]:
    """Flat big_vision names -> SigLIP state dict (prefixed), float32, contiguous."""
    config = siglip_config(flat, model_config)
    flat = dict(flat)
    if "pos_embedding" not in flat:  # fixed sin/cos: SigLIP stores a table, so store the values
        side = int(model_config.image_size) // int(model_config.patch_size)
        flat["pos_embedding"] = posemb_sincos_2d(side, side, int(model_config.width))
    names = _names(config["num_hidden_layers"])
    unused = sorted(set(flat) - {ours for ours, _, _ in names})
    if unused:
        raise ExportError(f"encoder parameters with no SigLIP counterpart: {unused[:4]} (pool "
                          "heads and [cls] tokens are not exported)")
    return {PREFIX + theirs: np.ascontiguousarray(_to_torch(flat[ours], how), np.float32)
            for ours, theirs, how in names}


def write(flat: Mapping[str, np.ndarray], model_config: Any, out_dir: str) -> list[str]:
    """Writes config.json, model.safetensors and preprocessor_config.json into out_dir; returns
    the file names written."""
    from safetensors.numpy import save

    state = to_state_dict(flat, model_config)
    out = epath.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = siglip_config(flat, model_config)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "preprocessor_config.json").write_text(
        json.dumps(preprocessor_config(int(model_config.image_size)), indent=2) + "\n")
    (out / WEIGHTS).write_bytes(save(state, metadata={"format": "pt"}))
    return ["config.json", WEIGHTS, "preprocessor_config.json"]


def read(out_dir: str) -> dict[str, np.ndarray]:
    """A SiglipVisionModel directory (ours or any without a head) -> flat big_vision names."""
    from safetensors.numpy import load

    root = epath.Path(out_dir)
    config = json.loads((root / "config.json").read_text())
    state = load((root / WEIGHTS).read_bytes())
    state = {k.removeprefix(PREFIX): v for k, v in state.items()}
    heads = int(config["num_attention_heads"])
    names = _names(int(config["num_hidden_layers"]))
    missing = sorted(theirs for _, theirs, _ in names if theirs not in state)
    unexpected = sorted(set(state) - {theirs for _, theirs, _ in names})
    if missing or unexpected:
        raise ValueError(f"{out_dir}/{WEIGHTS} is not a head-less SiglipVisionModel: missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]}")
    for key, ours in (("hidden_act", HIDDEN_ACT), ("layer_norm_eps", LN_EPSILON)):
        if config.get(key, ours) != ours:
            raise ValueError(f"{out_dir}/config.json has {key}={config[key]!r}; our ViT computes "
                             f"with {ours!r}, so its outputs would differ")
    return {ours: _from_torch(state[theirs], how, heads) for ours, theirs, how in names}
