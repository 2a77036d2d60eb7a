"""OWL-ViT labelling throughput on the OWL-ST workload: ours (JAX) vs a plain transformers pipeline.

Workload: COCO captions from ../shared/data/coco-mini as alt-texts, turned into n-gram queries by
the recipe (`pipelines.queries.queries_from_alt_text`, up to 10-word n-grams, cap 300), OWL-ViT
B/32 at 768 px with random weights (transformers' real B/32 config). Both sides get the same
images, the same queries and the recipe's 7 CLIP prompt templates (`--templates plain`: one "{}").
Reference: transformers processor + OwlViTForObjectDetection per batch with every template x query
of each image, as a user would write it. Ours deduplicates queries, caches their embeddings across
batches and packs the text tower as a prefix trie (see pipelines/owlvit/packing.py).
Also prints achieved FLOP/s of ours against a float32 matmul peak measured in the same run.

Reproduce:
  .venv/bin/python tests/benchmarks/annotate_throughput.py --images 16 --batch 4 --alt-text single
  .venv/bin/python tests/benchmarks/annotate_throughput.py --images 16 --batch 4 --alt-text joined
  (single: each image's first COCO caption; joined: its 5 captions as one alt-text, ~300 queries)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
COCO = ROOT.parent / "shared" / "data" / "coco-mini"


def _layer_flops(tokens: int, d: int, mlp: int) -> float:
    """Matmul FLOPs of one pre-LN transformer layer on one sequence of `tokens`."""
    return 2 * tokens * (4 * d * d + 2 * d * mlp) + 4 * tokens * tokens * d


def image_flops(cfg) -> float:
    v, p = cfg.vision, cfg.num_patches
    tower = v.num_layers * _layer_flops(p + 1, v.hidden_size, v.intermediate_size)
    patch = 2 * p * 3 * cfg.patch_size**2 * v.hidden_size
    heads = 2 * p * v.hidden_size * (2 * v.hidden_size + 4 + cfg.text.hidden_size + 2)
    return tower + patch + heads


def text_flops(cfg, sequences: int, length: int) -> float:
    t = cfg.text
    return sequences * t.num_layers * _layer_flops(length, t.hidden_size, t.intermediate_size)


def packed_text_flops(cfg, rows: int, row_len: int, eos_slots: int) -> float:
    """FLOPs of our packed text calls: all layers on row_len tokens but the last, which projects
    K/V for every token and runs Q, attention, out-proj and MLP only at eos_slots tokens."""
    t = cfg.text
    d, mlp = t.hidden_size, t.intermediate_size
    last = 2 * row_len * 2 * d * d + 2 * eos_slots * (2 * d * d + 2 * d * mlp) \
        + 4 * eos_slots * row_len * d
    return rows * ((t.num_layers - 1) * _layer_flops(row_len, d, mlp) + last)


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def load_workload(n: int, offset: int, alt_text: str, max_ngram: int, max_queries: int):
    from PIL import Image

    from pipelines.queries import queries_from_alt_text

    if not COCO.is_dir():
        raise SystemExit(f"COCO sample not found at {COCO}: the benchmark needs ../shared/data")
    caps = json.loads((COCO / "annotations" / "captions_train2017.json").read_text())
    by_image: dict[int, list[str]] = {}
    for a in caps["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["caption"].strip())
    files = {im["id"]: im["file_name"] for im in caps["images"]}
    ids = sorted(by_image)[offset:offset + n]
    items = []
    for i in ids:
        text = by_image[i][0] if alt_text == "single" else " ".join(by_image[i])
        image = np.asarray(Image.open(COCO / "train2017" / files[i]).convert("RGB"))
        items.append((str(i), image, queries_from_alt_text(text, max_ngram=max_ngram,
                                                            max_queries=max_queries)))
    return items


def run_ours(labeler, chunk):
    """-> (wall s, process CPU s) for one batch."""
    from pipelines.labelers.base import LabelerInput

    t, c = time.perf_counter(), time.process_time()
    labeler.detect([LabelerInput(k, im, q) for k, im, q in chunk])
    return np.array([time.perf_counter() - t, time.process_time() - c])


def run_hf(model, processor, chunk, templates):
    import torch

    t, c = time.perf_counter(), time.process_time()
    text = [[tpl.format(q) for tpl in templates for q in (qs or [" "])] for _, _, qs in chunk]
    inputs = processor(text=text, images=[im for _, im, _ in chunk], return_tensors="pt",
                       truncation=True)
    with torch.no_grad():
        model(**inputs)
    return np.array([time.perf_counter() - t, time.process_time() - c])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--alt-text", choices=["single", "joined"], default="single")
    ap.add_argument("--templates", choices=["plain", "clip7"], default="clip7")
    ap.add_argument("--max-ngram", type=int, default=10)
    ap.add_argument("--max-queries", type=int, default=300)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--hf-images", type=int, default=None,
                    help="time transformers on only the first N images (its cost per image does "
                         "not depend on other batches); default: all")
    args = ap.parse_args(argv)

    import torch
    from owlvit_fixtures import make_tiny_checkpoint
    from transformers import AutoProcessor, OwlViTConfig, OwlViTForObjectDetection

    from pipelines.owlvit.labeler import OwlVitLabeler
    from pipelines.owlvit.text import CLIP_BEST_TEMPLATES, PLAIN_TEMPLATE

    templates = PLAIN_TEMPLATE if args.templates == "plain" else CLIP_BEST_TEMPLATES
    items = load_workload(args.images, 0, args.alt_text, args.max_ngram, args.max_queries)
    warm = load_workload(args.batch, 40, args.alt_text, args.max_ngram, args.max_queries)
    nq = [len(q) for _, _, q in items]
    print(f"workload: {len(items)} images, queries/image mean {np.mean(nq):.0f} max {max(nq)}, "
          f"alt-text={args.alt_text}, templates={args.templates}, batch={args.batch}")
    torch.set_num_threads(torch.get_num_threads())
    peak = matmul_peak()
    print(f"matmul peak (jax f32 2048^3): {peak / 1e9:.0f} GFLOP/s")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_tiny_checkpoint(tmp, 1, config=OwlViTConfig())
        labeler = OwlVitLabeler.from_checkpoint(str(ckpt), templates=templates,
                                                max_batch=args.batch)
        model = OwlViTForObjectDetection.from_pretrained(ckpt).eval()
        processor = AutoProcessor.from_pretrained(ckpt)
        run_ours(labeler, warm)  # compiles; then forget the warm-up's queries
        run_hf(model, processor, warm[:1], templates)
        labeler._cache.clear()
        labeler.stats.clear()
        # Batches alternate between the two so load from other jobs hits both alike.
        t_ours, t_hf = np.zeros(2), np.zeros(2)
        n_hf = len(items) if args.hf_images is None else min(args.hf_images, len(items))
        for s in range(0, len(items), args.batch):
            t_ours += run_ours(labeler, items[s:s + args.batch])
            if not args.skip_hf and s < n_hf:
                t_hf += run_hf(model, processor, items[s:min(s + args.batch, n_hf)], templates)
        st = labeler.stats
        cfg = labeler.config
        text_f = packed_text_flops(cfg, st["text_rows_run"], labeler.row_len, labeler.eos_slots)
        flops = image_flops(cfg) * len(items) + text_f
        hf_seqs = len(templates) * sum(max(1, q) for q in nq)
        hf_text_f = text_flops(cfg, hf_seqs, cfg.max_text_len)
        n = len(items)
        print(f"ours: {n / t_ours[0]:.3f} images/s ({t_ours[0]:.1f} s wall, {t_ours[1]:.1f} s CPU), "
              f"{flops / t_ours[0] / 1e9:.0f} GFLOP/s = {flops / t_ours[0] / peak:.0%} of peak; "
              f"{st['queries']} queries -> {st['queries_embedded']} unique-uncached -> "
              f"{st['text_sequences']} template sequences ({st['text_tokens_unpacked']} tokens "
              f"unpadded) packed into {st['text_tokens_used']} trie tokens in "
              f"{st['text_rows_run']} rows x {labeler.row_len}; "
              f"compiled programs {labeler.num_compiled_programs} (incl. warm-up)")
        print(f"work per image, GFLOP: image tower {image_flops(cfg) / 1e9:.0f}; text ours "
              f"{text_f / n / 1e9:.0f}, transformers {hf_text_f / n / 1e9:.0f} "
              f"({hf_seqs} sequences x {cfg.max_text_len} tokens)")
        if args.skip_hf:
            return
        print(f"transformers: {n_hf / t_hf[0]:.3f} images/s on {n_hf} images "
              f"({t_hf[0]:.1f} s wall, {t_hf[1]:.1f} s CPU)")
        # Per-image rates, so a --hf-images subset compares fairly.
        print(f"speedup (ours / transformers): {(n / t_ours[0]) / (n_hf / t_hf[0]):.2f}x wall, "
              f"{(n / t_ours[1]) / (n_hf / t_hf[1]):.2f}x CPU time")


if __name__ == "__main__":
    main()
