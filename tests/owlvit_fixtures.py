"""Tiny random OWL-ViT checkpoints in the Hugging Face layout, for tests and the offline demo.

`make_tiny_checkpoint(dir, version)` writes what `google/owlvit-*` / `google/owlv2-*` ship —
config.json, model.safetensors, a CLIP-format BPE tokenizer (vocab.json, merges.txt, tokenizer
files) and the processor config — with random weights and a small vocabulary trained here, so both
transformers and `pipelines.owlvit` read the same files. Needs torch + transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

WORDS = """a an the of in on at with and to for by from is are two three some this that photo
picture image person people man woman men women child boy girl baby player crowd cat cats dog
dogs horse horses cow sheep bird birds bear elephant giraffe zebra car cars bus truck train
plane boat bicycle bike motorcycle street road sidewalk building house kitchen table chair couch
bed room window door wall floor tree trees grass field beach water ocean sky snow mountain park
city sign light pizza sandwich cake food plate bowl cup glass bottle banana apple orange broccoli
hot dog phone laptop computer keyboard tv book clock vase umbrella bag kite frisbee skateboard
surfboard skis ball tennis racket baseball bat glove red blue green white black yellow brown
large small big little old young tall standing sitting riding holding eating playing walking
flying looking laying parked next top front near down up over its their his her itap bad
origami video game art itap""".split()


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode char table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def write_clip_tokenizer_files(directory: Path, num_merges: int = 300) -> int:
    """Writes vocab.json + merges.txt in CLIP's layout (bytes, bytes+</w>, merges, then
    <|startoftext|>, <|endoftext|> with the highest ids). Returns the vocab size."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    alphabet = list(bytes_to_unicode().values())
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix=""))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=2 * len(alphabet) + num_merges, show_progress=False,
                                  initial_alphabet=alphabet, end_of_word_suffix="</w>",
                                  special_tokens=[])
    tok.train_from_iterator([" ".join(WORDS)] * 3, trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    vocab_list = alphabet + [c + "</w>" for c in alphabet]
    seen = set(vocab_list)
    kept = []
    for a, b in merges:
        if a in seen and b in seen and a + b not in seen:
            vocab_list.append(a + b)
            seen.add(a + b)
            kept.append((a, b))
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(vocab_list)}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in kept) + "\n", encoding="utf-8")
    return len(vocab)


def tiny_hf_config(version: int = 1, vocab_size: int = 1000, image_size: int = 64,
                   patch_size: int = 16, **overrides):
    from transformers import Owlv2Config, OwlViTConfig

    # CLIP's BOS/EOS are the last two ids of the vocab; "!" (id 0) is OWL-ViT's pad token.
    text = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=16, pad_token_id=0,
                bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1)
    vision = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  image_size=image_size, patch_size=patch_size)
    text.update(overrides.pop("text", {}))
    vision.update(overrides.pop("vision", {}))
    cls = Owlv2Config if version == 2 else OwlViTConfig
    return cls(text_config=text, vision_config=vision, projection_dim=text["hidden_size"],
               **overrides)


def _tame_output_layers(model) -> None:
    """Re-draws the heads' last layers with std 2/sqrt(fan_in): O(1) logits and box offsets.

    transformers' random init gives logit scales of 10-2000 (real checkpoints: logits of about
    +-10), where float32 rounding alone exceeds the 1e-4 comparison tolerance. Everything else
    keeps transformers' random init.
    """
    import torch

    layers = [model.class_head.logit_shift, model.class_head.logit_scale, model.box_head.dense2]
    if hasattr(model, "objectness_head"):
        layers.append(model.objectness_head.dense2)
    with torch.no_grad():
        for layer in layers:
            fan_in = layer.weight.shape[1]
            layer.weight.normal_(0.0, 2.0 / fan_in**0.5)
            layer.bias.zero_()


def make_tiny_checkpoint(directory: str | Path, version: int = 1, *, seed: int = 0,
                         image_size: int = 64, patch_size: int = 16, config=None) -> Path:
    """Writes a random tiny transformers OWL-ViT (v1) / OWLv2 checkpoint + tokenizer; returns dir.

    `config` (a transformers OwlViTConfig/Owlv2Config) overrides the tiny sizes, e.g. the real
    B/32 config; its vocab must hold the tiny tokenizer's ids (any real vocab size does).
    """
    import torch
    from transformers import (
        CLIPTokenizer,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
        OwlViTForObjectDetection,
        OwlViTImageProcessor,
        OwlViTProcessor,
    )

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab_size = write_clip_tokenizer_files(directory)
    if config is None:
        config = tiny_hf_config(version, vocab_size, image_size, patch_size)
    torch.manual_seed(seed)
    model_cls = Owlv2ForObjectDetection if version == 2 else OwlViTForObjectDetection
    model = model_cls(config).eval()
    _tame_output_layers(model)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer = CLIPTokenizer(vocab=str(directory / "vocab.json"),
                              merges=str(directory / "merges.txt"), pad_token="!",
                              model_max_length=16)
    size = config.vision_config.image_size
    if version == 2:
        processor = Owlv2Processor(Owlv2ImageProcessor(size={"height": size, "width": size}),
                                   tokenizer)
    else:
        processor = OwlViTProcessor(
            OwlViTImageProcessor(size={"height": size, "width": size},
                                 crop_size={"height": size, "width": size}), tokenizer)
    processor.save_pretrained(directory)
    return directory
