"""The OWL-ViT labeler of the annotate stage: images + n-gram queries -> boxes, per-query scores.

Speed comes from doing less work, exactly (the OWL-ST workload is up to 300 queries per image):
  - queries are deduplicated across the batch and their (template-ensembled) embeddings are kept in
    a bounded LRU cache across batches;
  - text sequences are packed as a trie (packing.py): shared prefixes (the template's words, n-grams
    starting at the same word) are computed once per row, with a tree attention mask (exact: CLIP
    text attention is causal and pools the EOS token), and the last layer runs only at the EOS
    tokens;
  - batch sizes and sequence lengths are bucketed so XLA compiles a handful of programs
    (`num_compiled_programs`), and class logits are one host matmul per image.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pipelines.labelers.base import Detections, Labeler, LabelerInput
from pipelines.owlvit import checkpoint as ckpt_lib
from pipelines.owlvit.model import OwlViT, class_logits
from pipelines.owlvit.packing import pack
from pipelines.owlvit.postprocess import to_image_boxes
from pipelines.owlvit.preprocess import preprocess
from pipelines.owlvit.text import CLIP_BEST_TEMPLATES, QueryTokenizer, apply_templates

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _bucket(n: int, smallest: int, largest: int) -> int:  # image batch sizes
    """Smallest power-of-two multiple of `smallest` that holds n, capped at `largest`."""
    b = smallest
    while b < n and b < largest:
        b *= 2
    return min(b, largest)


@functools.lru_cache(maxsize=8)
def _jitted(cfg, dtype: str):
    """(image_fn, text_fn) jitted once per (config, dtype): labelers of one model share programs."""
    model = OwlViT(cfg, dtype=_DTYPES[dtype])
    image_fn = jax.jit(lambda p, x: model.apply({"params": p}, x, method=OwlViT.embed_image))
    text_fn = jax.jit(lambda p, i, pos, m, e: model.apply(
        {"params": p}, i, pos, m, e, method=OwlViT.embed_text_packed))
    return image_fn, text_fn


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # tanh form: no overflow warnings for large negative logits.
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)


class OwlVitLabeler(Labeler):
    """OWL-ViT v1 / OWLv2 pseudo-labeler (JAX). Build with `from_checkpoint`."""

    name = "owlvit"

    def __init__(self, checkpoint: ckpt_lib.Checkpoint, tokenizer: QueryTokenizer, *,
                 templates: Sequence[str] = CLIP_BEST_TEMPLATES, dtype: str = "float32",
                 max_batch: int = 8, cache_size: int = 100_000, text_rows: int = 16,
                 row_len: int = 128, resize_method: str | None = None):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r} is not supported; use one of {sorted(_DTYPES)}")
        if not templates:
            raise ValueError("templates is empty; pass ('{}',) to embed queries as they are")
        apply_templates(["x"], templates)  # validates the placeholders early
        self.config = checkpoint.config
        self._fingerprint = checkpoint.fingerprint
        self.tokenizer = tokenizer
        self.templates = tuple(templates)
        self.max_batch = max(1, int(max_batch))
        # Packed text rows: row_len tokens each (a trie chunk), at most text_rows rows per call.
        self.row_len = max(int(row_len), checkpoint.config.max_text_len)
        self.eos_slots = max(1, self.row_len // 3)
        self.text_rows = max(1, int(text_rows))
        self.cache_size = max(0, int(cache_size))
        self.resize_method = resize_method or ("bicubic" if self.config.version == 1 else "linear_aa")
        compute = _DTYPES[dtype]
        params = checkpoint.params
        if compute != jnp.float32:
            params = jax.tree.map(lambda a: np.asarray(a).astype(compute), params)
        self._params = jax.device_put(params)
        self._image_fn, self._text_fn = _jitted(self.config, dtype)
        self._shapes: set[tuple] = set()
        self._cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self.stats = collections.Counter()

    @classmethod
    def from_checkpoint(cls, path_or_hub_id: str, *, templates: Sequence[str] = CLIP_BEST_TEMPLATES,
                        dtype: str = "float32", max_batch: int = 8, cache_size: int = 100_000,
                        **kwargs) -> OwlVitLabeler:
        """Loads a local HF-layout checkpoint dir (or hub id when online), strictly."""
        checkpoint = ckpt_lib.load(path_or_hub_id)
        try:
            tokenizer = QueryTokenizer(checkpoint.directory, checkpoint.config.max_text_len)
        except FileNotFoundError as e:
            raise ckpt_lib.CheckpointError(str(e)) from None
        return cls(checkpoint, tokenizer, templates=templates, dtype=dtype, max_batch=max_batch,
                   cache_size=cache_size, **kwargs)

    @property
    def fingerprint(self) -> str:
        return f"{self.name}:{self._fingerprint}"

    @property
    def num_compiled_programs(self) -> int:
        """Distinct (function, input shape) pairs run so far = XLA programs compiled."""
        return len(self._shapes)

    # ---- text ------------------------------------------------------------------------------

    def _run_text(self, texts: list[str]) -> np.ndarray:
        """texts -> float32[N, D] unit embeddings, through trie-packed rows (see packing.py).

        Calls take power-of-two row counts up to text_rows, all of row_len tokens, so the text
        tower compiles at most log2(text_rows) + 1 programs.
        """
        seqs = self.tokenizer.token_lists(texts)
        packed = pack(seqs, self.row_len, self.eos_slots)
        n_rows = packed.ids.shape[0]
        feats = np.zeros((n_rows, self.eos_slots, self.config.projection_dim), np.float32)
        start = 0
        while start < n_rows:
            rows = _bucket(n_rows - start, 1, self.text_rows)
            take = min(rows, n_rows - start)
            sl = slice(start, start + take)
            pad = ((0, rows - take),)
            args = [np.pad(a[sl], pad + ((0, 0),) * (a.ndim - 1))
                    for a in (packed.ids, packed.positions, packed.mask, packed.eos_idx)]
            self._shapes.add(("text", args[0].shape))
            feats[sl] = np.asarray(self._text_fn(self._params, *args))[:take]
            self.stats["text_rows_run"] += rows
            self.stats["text_tokens_run"] += rows * self.row_len
            start += take
        self.stats["text_sequences"] += len(texts)
        self.stats["text_tokens_used"] += packed.tokens
        self.stats["text_tokens_unpacked"] += sum(len(s) for s in seqs)
        return feats[packed.out_row, packed.out_slot]

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        """queries -> float32[Q, D]: the mean of the unit embeddings of every template (cached)."""
        missing = list(dict.fromkeys(q for q in queries if q not in self._cache))
        self.stats["queries"] += len(queries)
        self.stats["queries_embedded"] += len(missing)
        fresh: dict[str, np.ndarray] = {}
        if missing:
            emb = self._run_text(apply_templates(missing, self.templates))
            emb = emb.reshape(len(self.templates), len(missing), -1).mean(0)
            fresh = dict(zip(missing, emb, strict=True))
        result = np.zeros((len(queries), self.config.projection_dim), np.float32)
        for i, q in enumerate(queries):
            if q in fresh:
                result[i] = fresh[q]
            else:
                result[i] = self._cache[q]
                self._cache.move_to_end(q)
        for q, e in fresh.items():
            if self.cache_size:
                self._cache[q] = e
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return result

    # ---- images ----------------------------------------------------------------------------

    def embed_images(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """uint8[H, W, 3] images (len <= max_batch) -> embed_image outputs as numpy, [len, P, ...]."""
        size = self.config.image_size
        pixels = np.stack([preprocess(im, size, self.resize_method) for im in images])
        b = _bucket(len(images), 1, self.max_batch)
        pixels = np.pad(pixels, ((0, b - len(images)), (0, 0), (0, 0), (0, 0)))
        self._shapes.add(("image", pixels.shape))
        out = self._image_fn(self._params, pixels)
        self.stats["images"] += len(images)
        return {k: np.asarray(v, np.float32)[: len(images)] for k, v in out.items()
                if k != "feature_map"}

    def detect(self, batch: list[LabelerInput]) -> list[Detections]:
        """One Detections per input: boxes normalized [ymin, xmin, ymax, xmax] of the original image,
        scores = sigmoid(logits) float32[P, Q], objectness = sigmoid(objectness logits) (v2)."""
        for item in batch:
            shape = np.shape(item.image)
            if len(shape) < 2 or shape[0] == 0 or shape[1] == 0:
                raise ValueError(f"image {item.key!r} has zero size {list(shape)}; cannot label it")
        results: list[Detections] = []
        for start in range(0, len(batch), self.max_batch):
            chunk = batch[start:start + self.max_batch]
            all_queries = [q for item in chunk for q in item.queries]
            emb = self.embed_queries(all_queries) if all_queries else None
            outs = self.embed_images([item.image for item in chunk])
            offset = 0
            for i, item in enumerate(chunk):
                q = len(item.queries)
                h, w = np.shape(item.image)[:2]
                if q:
                    logits = class_logits(outs["class_embeds"][i], outs["logit_shift"][i],
                                          outs["logit_scale"][i], emb[offset:offset + q])
                    scores = _sigmoid(logits)
                else:
                    scores = np.zeros((outs["class_embeds"].shape[1], 0), np.float32)
                offset += q
                obj = outs.get("objectness_logits")
                results.append(Detections(
                    boxes=to_image_boxes(outs["pred_boxes"][i], h, w),
                    scores=scores,
                    objectness=None if obj is None else _sigmoid(obj[i]),
                ))
        return results
