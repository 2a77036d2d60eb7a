"""OWL-ViT sizes, read from a Hugging Face `config.json` (v1 `owlvit` and v2 `owlv2`)."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class TowerConfig:
    """One CLIP transformer tower (text or image)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"


@dataclasses.dataclass(frozen=True)
class OwlConfig:
    """Everything the Flax model needs.

    Attributes:
      version: 1 (OWL-ViT) or 2 (OWLv2: adds the objectness head).
      image_size: side of the square model input in pixels.
      patch_size: ViT patch side; the box grid is (image_size // patch_size)**2 patches.
      max_text_len: the text tower's position table length (16 for all public checkpoints).
    """

    version: int
    text: TowerConfig
    vision: TowerConfig
    vocab_size: int
    max_text_len: int
    image_size: int
    patch_size: int
    projection_dim: int

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2


def _tower(d: dict[str, Any], defaults: dict[str, Any]) -> TowerConfig:
    get = lambda k: d.get(k, defaults[k])  # noqa: E731
    return TowerConfig(
        hidden_size=int(get("hidden_size")),
        intermediate_size=int(get("intermediate_size")),
        num_layers=int(get("num_hidden_layers")),
        num_heads=int(get("num_attention_heads")),
        layer_norm_eps=float(get("layer_norm_eps")),
        hidden_act=str(get("hidden_act")),
    )


# transformers' defaults: a config.json written by save_pretrained omits fields equal to them.
_TEXT_DEFAULTS = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                      num_attention_heads=8, layer_norm_eps=1e-5, hidden_act="quick_gelu",
                      vocab_size=49408, max_position_embeddings=16)
_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                        num_attention_heads=12, layer_norm_eps=1e-5, hidden_act="quick_gelu",
                        image_size=768, patch_size=32)


def from_hf_dict(cfg: dict[str, Any]) -> OwlConfig:
    """Builds an OwlConfig from the parsed `config.json` of an OWL-ViT / OWLv2 checkpoint."""
    model_type = cfg.get("model_type", "")
    if model_type not in ("owlvit", "owlv2"):
        raise ValueError(
            f"config.json has model_type {model_type!r}; expected 'owlvit' or 'owlv2' "
            "(an OWL-ViT checkpoint in the Hugging Face layout)"
        )
    text = cfg.get("text_config") or {}
    vision = cfg.get("vision_config") or {}
    vision_defaults = dict(_VISION_DEFAULTS)
    if model_type == "owlv2":
        vision_defaults.update(image_size=960, patch_size=16)
    tcfg, vcfg = _tower(text, _TEXT_DEFAULTS), _tower(vision, vision_defaults)
    image_size = vision.get("image_size", vision_defaults["image_size"])
    patch_size = vision.get("patch_size", vision_defaults["patch_size"])
    for name, value in (("image_size", image_size), ("patch_size", patch_size)):
        if isinstance(value, (list, tuple)):
            if len(set(value)) != 1:
                raise ValueError(f"vision_config.{name}={value}: only square sizes are supported")
            value = value[0]
    image_size = image_size[0] if isinstance(image_size, (list, tuple)) else image_size
    patch_size = patch_size[0] if isinstance(patch_size, (list, tuple)) else patch_size
    if tcfg.hidden_size % tcfg.num_heads or vcfg.hidden_size % vcfg.num_heads:
        raise ValueError("hidden_size must be divisible by num_attention_heads in both towers")
    return OwlConfig(
        version=2 if model_type == "owlv2" else 1,
        text=tcfg,
        vision=vcfg,
        vocab_size=int(text.get("vocab_size", _TEXT_DEFAULTS["vocab_size"])),
        max_text_len=int(text.get("max_position_embeddings", 16)),
        image_size=int(image_size),
        patch_size=int(patch_size),
        projection_dim=int(cfg.get("projection_dim", 512)),
    )
