"""The model card (README.md in the Hugging Face layout) written next to each encoder export.

YAML front matter (library_name, license, tags, pipeline_tag, base_model: none) then: what the
model is, how it was trained (WORKDIR/config.json; the shards' manifest.json counts when the
manifest is reachable from the recorded train_glob), its evaluation results at the exported step
(WORKDIR/eval/results.jsonl; an interval is shown where a row carries one, see `interval`), how to
load it in both ecosystems, and its limitations.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from etils import epath

FORMATS = ("big_vision", "transformers")


@dataclasses.dataclass
class Facts:
    step: int
    config: dict  # WORKDIR/config.json
    results: list[dict]  # results.jsonl rows at `step`
    manifest: dict | None  # the shards' manifest.json, None when not reachable
    manifest_path: str
    train_loss: float | None  # the last logged training loss at or before `step`


def _read_jsonl(path: epath.Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a killed writer is not a result
    return rows


def _manifest(config: dict, workdir: str) -> tuple[dict | None, str]:
    """The manifest.json next to the training shards (paths are tried as recorded, then from the
    workdir's parent, where a relative demo path starts)."""
    glob = str((config.get("data") or {}).get("train_glob", ""))
    if not glob:
        return None, ""
    rel = str(Path(glob).parent / "manifest.json")
    for candidate in (rel, str(Path(workdir).parent / rel)):
        path = epath.Path(candidate)
        if path.exists():
            return json.loads(path.read_text()), rel
    return None, rel


def gather(workdir: str, step: int) -> Facts:
    """Everything the card states, read from the workdir (and the shards' manifest)."""
    root = epath.Path(workdir)
    config = json.loads((root / "config.json").read_text())
    results = [r for r in _read_jsonl(root / "eval" / "results.jsonl") if r.get("step") == step]
    losses = [r for r in _read_jsonl(root / "metrics.jsonl")
              if "loss" in r and int(r.get("step", 0)) <= step]
    manifest, manifest_path = _manifest(config, workdir)
    return Facts(step, config, results, manifest, manifest_path,
                 float(losses[-1]["loss"]) if losses else None)


def interval(row: dict, rows: list[dict]) -> tuple[float, float] | None:
    """A row's interval where it carries one: fields `<metric>_lo`/`<metric>_hi` (or `lo`/`hi`)
    on the row itself, or sibling rows of the same step, evaluator and split whose metric is
    `<metric>_lo` / `<metric>_hi`. None when there is none."""
    metric = row.get("metric", "")
    for lo, hi in ((f"{metric}_lo", f"{metric}_hi"), ("lo", "hi")):
        if lo in row and hi in row:
            return float(row[lo]), float(row[hi])
    same = {r["metric"]: r["value"] for r in rows
            if (r.get("evaluator"), r.get("split")) == (row.get("evaluator"), row.get("split"))}
    if f"{metric}_lo" in same and f"{metric}_hi" in same:
        return float(same[f"{metric}_lo"]), float(same[f"{metric}_hi"])
    return None


def _result_rows(facts: Facts) -> list[str]:
    """Markdown table lines of the headline metrics at the exported step."""
    shown = [r for r in facts.results if not r["metric"].endswith(("_lo", "_hi", "/count"))
             and not r["metric"].startswith("count") and r.get("split") != "problems"]
    lines = ["| evaluator | split | metric | value | interval |", "|---|---|---|---|---|"]
    for r in sorted(shown, key=lambda r: (r["evaluator"], r["split"], r["metric"])):
        ci = interval(r, facts.results)
        text = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-"
        lines.append(f"| {r['evaluator']} | {r['split']} | {r['metric']} | {r['value']:.4f} | "
                     f"{text} |")
    return lines if shown else ["No evaluation results at this step in eval/results.jsonl."]


def _yaml(fmt: str, license_id: str, config: dict) -> str:
    library = "transformers" if fmt == "transformers" else "big_vision"
    tags = ["vision", "image-feature-extraction", "locca", "vit",
            "siglip-vision" if fmt == "transformers" else "jax"]
    model = config.get("model", {})
    lines = ["---", f"library_name: {library}", f"license: {license_id}",
             "pipeline_tag: image-feature-extraction", "tags:"]
    lines += [f"- {t}" for t in tags]
    lines += [f"- {model.get('variant', 'custom').replace('/', '')}", "---"]
    return "\n".join(lines)


def _training(facts: Facts) -> list[str]:
    c, m = facts.config, facts.config.get("model", {})
    weights = (c.get("loss") or {}).get("task_weights", {})
    optim = c.get("optim") or {}
    seen = facts.step * int(c.get("batch_size", 0))
    lines = [
        f"- Encoder: ViT variant `{m.get('variant')}`, width {m.get('width')}, depth "
        f"{m.get('depth')}, {m.get('num_heads')} heads, MLP {m.get('mlp_dim')}, patch "
        f"{m.get('patch_size')}, {m.get('image_size')} px input, position embedding "
        f"`{m.get('posemb')}`, pooling `{m.get('pool_type')}` (the output is all patch tokens).",
        f"- Decoder during pretraining (not exported): width {m.get('dec_width')}, depth "
        f"{m.get('dec_depth')}; tasks and loss weights {weights}.",
        f"- Exported step {facts.step} of {c.get('total_steps')}, batch {c.get('batch_size')} "
        f"({seen:,} examples seen), optimizer {optim.get('name')} lr {optim.get('lr')}, "
        f"seed {c.get('seed')}" + (f"; training loss {facts.train_loss:.3f} at the last logged "
                                   "step." if facts.train_loss is not None else "."),
        f"- Tokenizer: `{c.get('tokenizer')}`.",
    ]
    return lines + _data_lines(facts)


def _data_lines(facts: Facts) -> list[str]:
    glob = (facts.config.get("data") or {}).get("train_glob")
    if facts.manifest is None:
        return [f"- Data: `{glob}`; its manifest ({facts.manifest_path or 'none recorded'}) was "
                "not reachable when this card was written, so no counts are given."]
    counts = facts.manifest.get("counts", {})
    boxes = facts.manifest.get("boxes", {})
    labeler = facts.manifest.get("labeler")
    return [f"- Data: `{glob}` (manifest `{facts.manifest_path}`): {counts.get('read')} images "
            f"read, {counts.get('written')} records written, {counts.get('dead_lettered')} "
            f"dead-lettered, {counts.get('filtered')} filtered; {boxes.get('total')} pseudo-label "
            f"boxes ({boxes.get('mean_per_image', 0):.2f} per image), labeler `{labeler}`."]


_LOAD_HF = """```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, SiglipVisionModel

model = SiglipVisionModel.from_pretrained("PATH/transformers").eval()
processor = AutoImageProcessor.from_pretrained("PATH/transformers")
inputs = processor(images=Image.open("photo.jpg").convert("RGB"), return_tensors="pt")
with torch.no_grad():
    tokens = model(**inputs).last_hidden_state  # [1, N, D]: our encoder's output
```"""

_LOAD_BV = """```python
import numpy as np
from model import vit_weights  # this repository; keys are big_vision's ViT names

flat = dict(np.load("PATH/big_vision/encoder.npz"))  # {"Transformer/encoder_norm/scale": ...}
# init_params: the ViT params tree to fill; every name and shape must match (strict).
params = vit_weights.load_vit_params("PATH/big_vision/encoder.npz", init_params)
```
A new LocCa run starts from it with `--config.init.encoder_npz=PATH/big_vision/encoder.npz` (the
transformers directory works there too), and the frozen-encoder transfer evaluation reads it with
`encoder=PATH` (evaluation/evaluators/features.py). In big_vision itself, load it with
`models.vit.load(init_params, "encoder.npz", model_cfg)`."""


def _limitations(facts: Facts) -> list[str]:
    m = facts.config.get("model", {})
    out = [
        "- An encoder only: the captioning/box decoder that LocCa pretrains with is not part of "
        "this export (`python evaluation/predict_cli.py` runs the whole model from the workdir).",
        f"- Trained at {m.get('image_size')} px; other sizes need the position embedding "
        "resampled (big_vision's loader does it; transformers' `interpolate_pos_encoding=True` "
        "uses bicubic instead).",
        "- The transformers image processor resizes with Pillow's bilinear filter; training and "
        "this repository's evaluation resize with OpenCV (area-averaging when shrinking over "
        "2x), so inputs, and features, can differ a little between the two.",
        "- The results above are on the evaluation data this run was scored on; read them with "
        "the data's size and domain in mind. Pseudo-labels come from an automatic labeler and "
        "carry its errors and biases, as does the alt-text the captions come from.",
    ]
    if m.get("posemb") == "sincos2d":
        out.append("- The fixed 2-D sin/cos position embedding is stored as values in the "
                   "transformers export (SigLIP's position table); fine-tuning there will train it.")
    return out


def render(facts: Facts, fmt: str, license_id: str = "other", where: str = "PATH") -> str:
    """The README.md text of one export format ("big_vision" or "transformers"); `where` is the
    export's output directory, shown in the loading examples."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; known: {FORMATS}")
    what = ("a `SiglipVisionModel` without a pooling head (config.json + model.safetensors)"
            if fmt == "transformers" else
            "a big_vision ViT `.npz` (flat `/`-joined parameter names)")
    name = facts.config.get("model", {}).get("variant", "")
    body = [
        _yaml(fmt, license_id, facts.config), "",
        f"# LocCa ViT encoder ({name}, step {facts.step})", "",
        "The image encoder of a LocCa (Location-aware Captioner, NeurIPS 2024) pretraining run: a "
        "ViT trained with a decoder that writes captions (`cap`), boxes for expressions (`aref`) "
        f"and expressions for boxes (`gcap`). This export is {what}.", "",
        "## Training", "", *_training(facts), "",
        f"## Evaluation (step {facts.step})", "", *_result_rows(facts), "",
        "## How to load", "", "### transformers", "", _LOAD_HF.replace("PATH", where), "",
        "### big_vision / JAX", "", _LOAD_BV.replace("PATH", where), "",
        "## Limitations", "", *_limitations(facts), "",
        f"License: `{license_id}` (set with `--license`); the weights also inherit the terms of "
        "the training images and text.", "",
    ]
    return "\n".join(body)
