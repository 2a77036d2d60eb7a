"""The transformers export of the encoder (model/hf_siglip.py) computes what our ViT computes.

Parity: `SiglipVisionModel.from_pretrained(export).last_hidden_state` equals our encoder's output
within 1e-4 (float32) on real COCO photos, for the `tiny` and `S/16` configs, with every
parameter perturbed away from its init (an init LN scale of 1 and bias of 0 would hide a swapped
or transposed mapping). The export reads back to the same arrays, both formats load into a model.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evaluation.images import load_image, to_model_range
from model import hf_siglip, vit_weights
from model.configs import get_config
from model.vit import ViT

torch = pytest.importorskip("torch", reason="needs the `reference` extra (torch, transformers)")
transformers = pytest.importorskip("transformers")


def _vit(c) -> ViT:
    return ViT(patch_size=c.patch_size, width=c.width, depth=c.depth, mlp_dim=c.mlp_dim,
               num_heads=c.num_heads, posemb=c.posemb, pool_type=c.pool_type)


def perturbed_params(c, seed: int = 0) -> dict:
    """Random-init params of the config's ViT, every leaf moved by N(0, 0.05^2)."""
    size = int(c.image_size)
    params = jax.jit(lambda r: _vit(c).init(r, jnp.zeros((1, size, size, 3)))["params"])(
        jax.random.key(seed))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: np.asarray(x) + 0.05 * rng.normal(size=x.shape).astype(
        np.float32), params)


def photos(coco_mini, size: int, n: int = 3) -> np.ndarray:
    paths = sorted((coco_mini / "train2017").glob("*.jpg"))[:n]
    return to_model_range(np.stack([load_image(str(p), size) for p in paths]))


def siglip_output(export_dir, images: np.ndarray) -> np.ndarray:
    model, info = transformers.SiglipVisionModel.from_pretrained(
        str(export_dir), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    model.eval()
    with torch.no_grad():
        pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
        return model(pixel_values=pixels).last_hidden_state.numpy()


@pytest.mark.parametrize("variant,posemb", [
    ("tiny", "sincos2d"), pytest.param("S/16", "learn", marks=pytest.mark.slow)])
def test_siglip_last_hidden_state_matches_our_encoder(tmp_path, coco_mini, variant, posemb):
    c = get_config(variant, posemb=posemb)
    params = perturbed_params(c)
    images = photos(coco_mini, int(c.image_size))
    ours = np.asarray(jax.jit(lambda p, x: _vit(c).apply({"params": p}, x)[0])(params, images))
    flat = vit_weights.encoder_arrays(params)
    hf_siglip.write(flat, c, str(tmp_path / "hf"))
    theirs = siglip_output(tmp_path / "hf", images)
    assert theirs.shape == ours.shape == (len(images), (c.image_size // c.patch_size) ** 2,
                                          c.width)
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["hidden_act"] == "gelu_pytorch_tanh" and cfg["vision_use_head"] is False


def test_export_reads_back_and_loads_into_a_fresh_model(tmp_path):
    c = get_config("tiny", posemb="sincos2d")
    params = perturbed_params(c, seed=1)
    flat = vit_weights.encoder_arrays(params)
    hf_siglip.write(flat, c, str(tmp_path / "hf"))
    back = hf_siglip.read(str(tmp_path / "hf"))
    assert set(back) == set(flat) | {"pos_embedding"}  # the fixed posemb is stored as values
    for k, v in flat.items():
        np.testing.assert_array_equal(back[k], v)
    zeros = jax.tree.map(np.zeros_like, params)
    loaded = vit_weights.load_vit_params(str(tmp_path / "hf"), zeros)  # sincos: posemb dropped
    jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_heads_and_cls_tokens_are_refused_in_one_line(tmp_path):
    c = get_config("tiny", pool_type="tok")
    shapes = jax.eval_shape(lambda r: _vit(c).init(r, jnp.zeros((1, 112, 112, 3)))["params"],
                            jax.random.key(0))
    flat = vit_weights.encoder_arrays(jax.tree.map(lambda s: np.zeros(s.shape), shapes))
    with pytest.raises(hf_siglip.ExportError, match="pool_type 'tok'"):
        hf_siglip.write(flat, c, str(tmp_path / "hf"))
