"""OWL-ViT exactness against transformers (the reference implementation).

Tolerances: model outputs (embeddings, logits, boxes, objectness) max abs diff <= 1e-4 in float32;
preprocessing on real photos max abs diff <= 1e-4 (v2, same arithmetic) / <= 1e-5 (v1, both PIL);
post-processed boxes within 0.05 px.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import torch  # noqa: E402
from owlvit_fixtures import make_tiny_checkpoint  # noqa: E402

from pipelines.labelers.base import LabelerInput  # noqa: E402
from pipelines.owlvit import checkpoint as ckpt_lib  # noqa: E402
from pipelines.owlvit.labeler import OwlVitLabeler  # noqa: E402
from pipelines.owlvit.model import OwlViT, class_logits  # noqa: E402
from pipelines.owlvit.postprocess import post_process_object_detection  # noqa: E402
from pipelines.owlvit.preprocess import pad_to_square, preprocess  # noqa: E402
from pipelines.owlvit.text import QueryTokenizer  # noqa: E402

pytestmark = pytest.mark.reference
TOL = 1e-4
COCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini" / "train2017"
QUERIES = [  # per image: query counts 1, 3 and 5 (the HF batch pads to 5 with empty rows)
    ["cat"],
    ["a photo of a cat", "dog", "red car"],
    ["a man riding a horse on the beach with a red umbrella and two dogs playing in the snow",
     "bus", "two zebra standing in the grass", "!!", "a"],
]


def _hf_model(directory, version):
    from transformers import Owlv2ForObjectDetection, OwlViTForObjectDetection

    cls = Owlv2ForObjectDetection if version == 2 else OwlViTForObjectDetection
    return cls.from_pretrained(directory).eval()


@pytest.fixture(scope="module", params=[1, 2], ids=["v1", "v2"])
def tiny(request, tmp_path_factory):
    version = request.param
    directory = make_tiny_checkpoint(tmp_path_factory.mktemp(f"owl{version}"), version)
    return version, directory, _hf_model(directory, version)


def _hf_inputs(tok: QueryTokenizer, queries: list[list[str]], max_len=16):
    """transformers-style input: every image padded to the max query count with all-pad rows."""
    qmax = max(len(q) for q in queries)
    ids = np.zeros((len(queries) * qmax, max_len), np.int64)
    mask = np.zeros_like(ids)
    for i, qs in enumerate(queries):
        enc, eos = tok.encode(qs, length=max_len)
        ids[i * qmax: i * qmax + len(qs)] = enc
        mask[i * qmax: i * qmax + len(qs)] = np.arange(max_len)[None] <= eos[:, None]
    return torch.tensor(ids), torch.tensor(mask), qmax


def test_model_matches_transformers(tiny):
    version, directory, hf = tiny
    ck = ckpt_lib.load(str(directory))
    tok = QueryTokenizer(directory)
    model = OwlViT(ck.config)
    b = len(QUERIES)
    pixels = torch.randn(b, 3, ck.config.image_size, ck.config.image_size, generator=torch.Generator().manual_seed(1))
    ids, mask, qmax = _hf_inputs(tok, QUERIES)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    img = jax.jit(lambda p, x: model.apply({"params": p}, x, method=OwlViT.embed_image))(
        ck.params, pixels.numpy().transpose(0, 2, 3, 1))
    text_fn = jax.jit(lambda p, i, e: model.apply({"params": p}, i, e, method=OwlViT.embed_text))
    diff = lambda a, r: float(np.abs(np.asarray(a) - r.numpy()).max())  # noqa: E731
    assert diff(img["feature_map"], ref.image_embeds.reshape(b, -1, ref.image_embeds.shape[-1])) <= TOL
    assert diff(img["class_embeds"], ref.class_embeds) <= TOL
    assert diff(img["pred_boxes"], ref.pred_boxes) <= TOL
    if version == 2:
        assert diff(img["objectness_logits"], ref.objectness_logits) <= TOL
    else:
        assert "objectness_logits" not in img
    for i, qs in enumerate(QUERIES):
        q_ids, eos = tok.encode(qs)  # trimmed to this image's longest query, not 16
        assert q_ids.shape[1] <= 16
        text = np.asarray(text_fn(ck.params, q_ids, eos))
        assert diff(text, ref.text_embeds[i, : len(qs)]) <= TOL
        logits = class_logits(np.asarray(img["class_embeds"][i]), np.asarray(img["logit_shift"][i]),
                              np.asarray(img["logit_scale"][i]), text)
        assert logits.shape == (ck.config.num_patches, len(qs))
        assert diff(logits, ref.logits[i, :, : len(qs)]) <= TOL
        # transformers masks the padded query rows; we never compute them.
        assert bool((ref.logits[i, :, len(qs):] < -1e30).all())


def _photos(n):
    if not COCO.is_dir():
        pytest.skip(f"real photos not found at {COCO} (the shared test data folder)")
    from PIL import Image

    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(COCO.glob("*.jpg"))[:n]]


def test_labeler_and_postprocess_match_transformers(tiny):
    from transformers import AutoProcessor

    version, directory, hf = tiny
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (50, 80, 3), np.uint8), rng.integers(0, 256, (90, 60, 3), np.uint8),
              rng.integers(0, 256, (64, 64, 3), np.uint8)]
    labeler = OwlVitLabeler.from_checkpoint(str(directory), templates=("{}",), max_batch=4)
    dets = labeler.detect([LabelerInput(f"k{i}", im, qs) for i, (im, qs) in enumerate(
        zip(images, QUERIES, strict=True))])
    proc = AutoProcessor.from_pretrained(directory)
    # transformers' v1 processor stretches to a square; the original OWL-ViT pads first.
    hf_images = images if version == 2 else [pad_to_square(im) for im in images]
    pixels = proc.image_processor(images=hf_images, return_tensors="pt").pixel_values
    ids, mask, _ = _hf_inputs(labeler.tokenizer, QUERIES)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    sizes = [im.shape[:2] for im in images]
    ref_pp = proc.image_processor.post_process_object_detection(
        ref, threshold=0.5, target_sizes=[(max(s), max(s)) for s in sizes] if version == 1 else sizes)
    for i, (det, qs) in enumerate(zip(dets, QUERIES, strict=True)):
        ref_scores = torch.sigmoid(ref.logits[i, :, : len(qs)]).numpy()
        assert det.scores.shape == ref_scores.shape
        assert np.abs(det.scores - ref_scores).max() <= TOL
        assert (det.objectness is not None) == (version == 2)
        # Boxes: normalized [ymin, xmin, ymax, xmax] of the original image.
        h, w = sizes[i]
        cx, cy, bw, bh = ref.pred_boxes[i].numpy().T * max(h, w)
        expect = np.clip(np.stack([(cy - bh / 2) / h, (cx - bw / 2) / w, (cy + bh / 2) / h,
                                   (cx + bw / 2) / w], -1), 0, 1)
        assert np.abs(det.boxes - expect).max() <= TOL * 10
    # Post-processing on our outputs equals transformers' on its own outputs.
    outs = labeler.embed_images(images)
    for i, qs in enumerate(QUERIES):
        logits = class_logits(outs["class_embeds"][i], outs["logit_shift"][i],
                              outs["logit_scale"][i], labeler.embed_queries(qs))
        ours = post_process_object_detection(logits[None], outs["pred_boxes"][i][None], 0.5,
                                             [sizes[i]])[0]
        np.testing.assert_array_equal(ours["labels"], ref_pp[i]["labels"].numpy())
        np.testing.assert_allclose(ours["scores"], ref_pp[i]["scores"].numpy(), atol=TOL)
        np.testing.assert_allclose(ours["boxes"], ref_pp[i]["boxes"].numpy(), atol=0.05)


@pytest.mark.parametrize("version", [1, 2])
def test_preprocess_matches_transformers_on_real_photos(version):
    from transformers import Owlv2ImageProcessorPil, OwlViTImageProcessorPil

    photos = _photos(3)
    if version == 2:
        proc, size, method, tol = Owlv2ImageProcessorPil(), 960, "linear_aa", 1e-4
        ref_in = photos
    else:
        proc, size, method, tol = OwlViTImageProcessorPil(), 768, "bicubic", 1e-5
        ref_in = [pad_to_square(p) for p in photos]
    ref = proc(images=ref_in, return_tensors="np").pixel_values.transpose(0, 2, 3, 1)
    for p, r in zip(photos, ref, strict=True):
        ours = preprocess(p, size, method)
        assert ours.shape == r.shape == (size, size, 3)
        assert np.abs(ours - r).max() <= tol


@pytest.mark.slow
def test_real_b32_config_matches_transformers(tmp_path):
    from transformers import OwlViTConfig

    directory = make_tiny_checkpoint(tmp_path, 1, config=OwlViTConfig())
    hf = _hf_model(directory, 1)
    ck = ckpt_lib.load(str(directory))
    assert (ck.config.image_size, ck.config.patch_size, ck.config.grid_size) == (768, 32, 24)
    tok, model = QueryTokenizer(directory), OwlViT(ck.config)
    qs = [["a photo of a cat", "dog", "red car"], ["a man riding a horse", "bus", "tree"]]
    ids, mask, _ = _hf_inputs(tok, qs)
    pixels = torch.randn(2, 3, 768, 768, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    img = jax.jit(lambda p, x: model.apply({"params": p}, x, method=OwlViT.embed_image))(
        ck.params, pixels.numpy().transpose(0, 2, 3, 1))
    q_ids, eos = tok.encode([q for row in qs for q in row])
    text = np.asarray(model.apply({"params": ck.params}, q_ids, eos, method=OwlViT.embed_text))
    text = text.reshape(2, 3, -1)
    logits = class_logits(np.asarray(img["class_embeds"]), np.asarray(img["logit_shift"]),
                          np.asarray(img["logit_scale"]), text)
    # transformers' random B/32 init saturates the box head (pre-sigmoid values in the hundreds)
    # and the class logits, so boxes and logits are held to a tolerance relative to their scale.
    assert np.abs(text - ref.text_embeds.numpy()).max() <= TOL
    assert np.abs(np.asarray(img["class_embeds"]) - ref.class_embeds.numpy()).max() <= TOL
    assert np.abs(np.asarray(img["pred_boxes"]) - ref.pred_boxes.numpy()).max() <= 1e-3
    scale = max(1.0, float(np.abs(ref.logits.numpy()).max()))
    assert np.abs(logits - ref.logits.numpy()).max() <= TOL * scale
