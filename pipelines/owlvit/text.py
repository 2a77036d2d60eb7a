"""Text queries -> CLIP token ids, through HF `tokenizers` reading the checkpoint's own files.

Prompt-template ensembling follows the OWL-ST recipe: each query is embedded with several CLIP
templates and the unit-norm embeddings are averaged (see `OwlVitLabeler`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# The seven "best" CLIP ImageNet templates (CLIP's prompt-engineering notebook), used by OWL-ST.
CLIP_BEST_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
PLAIN_TEMPLATE: tuple[str, ...] = ("{}",)

# CLIP's pre-tokenization (same regex as transformers' CLIPTokenizer).
_CLIP_SPLIT = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"""
               r"""|[^\s\p{L}\p{N}]+""")


def _build_from_vocab(vocab_path: Path, merges_path: Path):
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    merges = [tuple(line.split()) for line in merges_path.read_text(encoding="utf-8").splitlines()
              if line.strip() and not line.startswith("#version")]
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, continuing_subword_prefix="",
                        end_of_word_suffix="</w>", fuse_unk=False, unk_token="<|endoftext|>"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(
        ("<|endoftext|>", vocab["<|endoftext|>"]), ("<|startoftext|>", vocab["<|startoftext|>"]),
        trim_offsets=False, add_prefix_space=False)
    return tok


class QueryTokenizer:
    """CLIP BPE tokenizer for OWL-ViT queries (max `max_len` tokens incl. BOS/EOS, truncating)."""

    def __init__(self, directory: str | Path, max_len: int = 16):
        from tokenizers import Tokenizer

        directory = Path(directory)
        if (directory / "tokenizer.json").is_file():
            self._tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
        elif (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
            self._tok = _build_from_vocab(directory / "vocab.json", directory / "merges.txt")
        else:
            raise FileNotFoundError(
                f"no tokenizer in {directory}: expected tokenizer.json or vocab.json + merges.txt "
                "(the checkpoint's CLIP tokenizer files)")
        self._tok.no_padding()
        # Long n-grams are truncated like transformers' processor does (BOS + 14 tokens + EOS).
        self._tok.enable_truncation(max_length=max_len)
        self.max_len = max_len

    def encode(self, texts: Sequence[str], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """texts -> (ids int32[N, L], eos_pos int32[N]).

        L = `length` or the longest sequence; shorter rows are padded after their EOS with 0 (the
        OWL-ViT pad id), which cannot change the EOS feature under the causal text mask.
        """
        encs = self._tok.encode_batch(list(texts), add_special_tokens=True)
        lengths = np.array([len(e.ids) for e in encs], np.int32)
        width = int(length if length is not None else max(lengths, default=1))
        if lengths.size and lengths.max() > width:
            raise ValueError(f"length {width} is shorter than the longest query ({lengths.max()})")
        ids = np.zeros((len(encs), width), np.int32)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = e.ids
        return ids, np.maximum(lengths - 1, 0)

    def token_lists(self, texts: Sequence[str]) -> list[list[int]]:
        """Unpadded ids per text (BOS ... EOS, truncated to max_len)."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=True)]

    def lengths(self, texts: Sequence[str]) -> np.ndarray:
        """int32[N] token counts (with BOS/EOS, after truncation)."""
        return np.array([len(e.ids) for e in self._tok.encode_batch(list(texts))], np.int32)


def apply_templates(queries: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Template-major list: [t0(q0), t0(q1), ..., t1(q0), ...] (len = T * Q)."""
    for t in templates:
        if "{}" not in t:
            raise ValueError(f"prompt template {t!r} has no '{{}}' placeholder for the query")
    return [t.format(q) for t in templates for q in queries]
