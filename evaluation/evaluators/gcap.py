"""Grounded captioning: `gcap` + a given box -> the region's phrase.

Data: RefCOCO-format refs + instances (one item per referred object, not per sentence). The target
phrase is the annotation's own `phrase`/`names` when the instances file carries them, else the
category name. Scores: exact match (normalized text equals one of the names), category hit (the
category appears in the output as whole words: a looser grounding check), CIDEr-D against the ref
sentences.
Config: refs, instances, images, splits (default ("val",)), batch_size, max_per_split.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import ml_collections
from etils import epath

from evaluation.data.refcoco import load_rec, load_refs
from evaluation.evaluators import base
from evaluation.metrics import caption_scores, simple_tokenize
from evaluation.train_run import TrainRun
from model import tasks


class Evaluator:
    def __init__(self, config: ml_collections.ConfigDict, run: TrainRun, shared: dict):
        self.run_ = run
        splits = tuple(config.get("splits", ("val",)))
        data = load_rec(config.refs, config.instances, config.images, splits=splits)
        self.problems = data.problems
        inst = json.loads(epath.Path(config.instances).read_text())
        cats = {c["id"]: c["name"] for c in inst.get("categories", [])}
        anns = {a["id"]: a for a in inst.get("annotations", [])}
        refs_by_id = {r.get("ref_id"): r for r in load_refs(config.refs)}
        limit = int(config.get("max_per_split", 0))
        self.items: dict[str, list[dict]] = {}
        for split in splits:
            seen, items = set(), []
            for e in data.split(split):
                if e.ref_id in seen:
                    continue
                seen.add(e.ref_id)
                ref = refs_by_id[e.ref_id]
                ann = anns[ref["ann_id"]]
                category = cats.get(ann.get("category_id"), "")
                # The sample corpus stores colour + category on each annotation.
                phrase = ann.get("phrase") or " ".join(
                    x for x in (ann.get("color"), category) if x)
                names = ann.get("names") or [phrase]
                sents = [s.get("sent", "") for s in ref.get("sentences", [])]
                items.append(dict(key=e.ref_id, path=e.image_path, box=e.box, category=category,
                                  names={simple_tokenize(n) for n in names},
                                  refs=[s for s in sents if s.strip()] or [category]))
            if items:
                self.items[split] = items[:limit] if limit else items
        self.predictor = base.shared_predictor(run, shared, int(config.get("batch_size", 32)))
        self.images = base.shared_images(run, shared)

    def run(self, ctx: base.StepContext) -> Iterator[tuple[str, float]]:
        tok = self.run_.tokenizer
        params = ctx.params
        for split, items in self.items.items():
            outputs: dict[int, str] = {}
            step = self.predictor.batch_size
            for i in range(0, len(items), step):
                chunk = items[i : i + step]
                enc = self.predictor.encode(params, self.images.batch([it["path"] for it in chunk]))
                prompts = [tasks.make_prompt("gcap", tok, box=it["box"]) for it in chunk]
                for it, ids in zip(chunk, self.predictor.generate(params, enc, prompts),
                                   strict=True):
                    outputs[it["key"]] = tasks.decode_target("gcap", ids, tok).text
            exact = [simple_tokenize(outputs[it["key"]]) in it["names"] for it in items]
            hit = [_names(outputs[it["key"]], it["category"]) for it in items]
            cider = caption_scores({it["key"]: it["refs"] for it in items}, outputs)["cider"]
            yield f"{split}/exact_match", sum(exact) / len(items)
            yield f"{split}/category_hit", sum(hit) / len(items)
            yield f"{split}/cider", cider
            yield f"{split}/count", float(len(items))
        yield from base.problems_metrics(self.problems)


def _names(text: str, word: str) -> bool:
    """Whether `text` contains `word` (one or more words) as whole words: "star" is not named by
    "starfish"; an empty word is never named."""
    word = simple_tokenize(word)
    return bool(word) and f" {word} " in f" {simple_tokenize(text)} "
