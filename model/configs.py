"""LocCa model configs: `get_config("tiny" | "S/16" | "B/16" | "L/14" | "<ViT>/<patch>", **overrides)`.

The returned ConfigDict is flat (one level) so overrides are plain keywords or, big_vision style,
a `"tiny,image_size=128,dec_depth=3"` string. Fields:

  image_size      input resolution (square), pixels in [-1, 1]
  patch_size, width, depth, mlp_dim, num_heads       ViT encoder
  posemb          "learn" | "sincos2d"
  pool_type       "none" | "map" | "gap" | "tok" (LocCa needs no pooled output: "none")
  enc_dropout     dropout in the encoder
  dec_width, dec_depth, dec_num_heads, dec_mlp_dim   decoder; default: the encoder's width, heads
                  and MLP, half its depth (the paper's choice)
  dec_dropout     dropout in the decoder
  vocab_size      must equal the tokenizer's vocab_size (the trainer sets it from the tokenizer)
  max_len         decoder input length L (text length; inputs = seq[:-1])
  pad_id          token id masked as attention key (tokenizer.pad_id, 0)
  dtype           activation dtype "float32" | "bfloat16" (params stay float32)
  loc_start, num_loc  the location tokens' ids [loc_start, loc_start + num_loc) (the trainer sets
                  them from the tokenizer; 0 = unknown)
  loc_embed_init  "normal" (as every other token) | "sincos": the location tokens' input
                  embeddings start as sin/cos features of the bin value, so neighbouring bins start
                  close (needs loc_start/num_loc)
  loc_head_init   "zeros" (CapPa: the output projection starts at zero) | "gaussian": the location
                  tokens' logits start as a Gaussian over the bins, N(u, loc_head_sigma^2) with u
                  a linear readout of the decoder's last hidden state (model/decoder.logits_init;
                  needs loc_start/num_loc)
  loc_head_sigma  width of that Gaussian in image units (default 0.1 = ~102 bins)

Shipped variants (SHIPPED): `tiny` runs on a 2-core CPU (ViT 128 wide, 4 deep, patch 8 at 64 px
= 64 tokens; decoder 128 wide, 2 deep; L=24); `S/16`, `B/16`, `L/14` are the paper-scale ones at
224 px with L=64. Any `{Ti,S,M,B,L,So400m,H}/{patch}` string also works.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from model.vit import VARIANTS, decode_variant

SHIPPED = ("tiny", "S/16", "B/16", "L/14")
_DECODER_KEYS = ("dec_width", "dec_depth", "dec_num_heads", "dec_mlp_dim")


def _base(variant: str) -> dict[str, Any]:
    if variant == "tiny":
        # 64 px with 8 px patches: an 8x8 grid of tokens, the cheapest model that still sees a
        # RefCOCO-sized referent across several patches (each example costs a fifth of ViT-S).
        enc = dict(width=128, depth=4, mlp_dim=512, num_heads=4, patch_size=8)
        return dict(enc, image_size=64, max_len=24, vocab_size=4096)
    name, _, patch = variant.partition("/")
    if name not in VARIANTS or not patch.isdigit():
        raise ValueError(f"unknown model variant {variant!r}: use one of {SHIPPED} or "
                         f"'<ViT>/<patch>' with ViT in {sorted(VARIANTS)}, e.g. 'B/16'")
    return dict(decode_variant(variant), image_size=224, max_len=64, vocab_size=32_000)


def parse_arg(arg: str) -> tuple[str, dict[str, Any]]:
    """A config string "name,key=value,..." -> ("name", {key: value, ...}).

    The one parser of every `get_config(arg)` string (model, training, evaluation configs). Each
    value becomes an int if it reads as one, else a float, else stays a string ("val+test",
    "bfloat16"); a pair without "=" is a ValueError naming it.
    """
    variant, *pairs = arg.split(",")
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"config override {pair!r} must look like key=value")
        out[key] = _number_or_str(value)
    return variant, out


def _number_or_str(value: str) -> int | float | str:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            continue
    return value


def get_config(arg: str = "tiny", **overrides: Any) -> ml_collections.ConfigDict:
    """Returns the model ConfigDict for `arg` (see module docstring), with `overrides` applied."""
    variant, parsed = parse_arg(arg)
    overrides = {**parsed, **overrides}
    base = _base(variant)
    cfg = dict(
        variant=variant, image_size=base["image_size"], patch_size=base["patch_size"],
        width=base["width"], depth=base["depth"], mlp_dim=base["mlp_dim"],
        num_heads=base["num_heads"], posemb="learn", pool_type="none", enc_dropout=0.0,
        dec_width=0, dec_depth=0, dec_num_heads=0, dec_mlp_dim=0, dec_dropout=0.0,
        vocab_size=base["vocab_size"], max_len=base["max_len"], pad_id=0, dtype="float32",
        loc_start=0, num_loc=0, loc_embed_init="normal",
        loc_head_init="zeros", loc_head_sigma=0.1,
    )
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise ValueError(f"unknown model config field(s) {unknown}; known: {sorted(cfg)}")
    cfg.update(overrides)
    # Decoder defaults follow the (possibly overridden) encoder: same width/heads/MLP, half depth.
    defaults = dict(dec_width=cfg["width"], dec_depth=max(1, cfg["depth"] // 2),
                    dec_num_heads=cfg["num_heads"], dec_mlp_dim=cfg["mlp_dim"])
    for key in _DECODER_KEYS:
        if not cfg[key]:
            cfg[key] = defaults[key]
    if cfg["image_size"] % cfg["patch_size"]:
        raise ValueError(f"image_size {cfg['image_size']} is not a multiple of patch_size "
                         f"{cfg['patch_size']}")
    if cfg["dtype"] not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {cfg['dtype']!r}")
    return ml_collections.ConfigDict(cfg)
