"""Does the decoder read the image? Teacher-forced loss with the right image vs another one.

For every task the model was trained on, the held-out targets are scored (mean NLL per target token,
the training loss without label smoothing or soft location targets) twice: with each example's own
image, and with another image of the split (fixed pairing: the image half the split's sorted image
ids away).
`reliance` is the difference in nats/token: ~0 means the decoder writes the same text whatever
the image (a language model of the targets plus the box prior); a captioner that sees gains a lot.
For `aref` the four location tokens are also scored alone (`loc_*`): the direct measure of whether
the boxes it writes depend on the picture, which REC Acc@0.5 only shows once they are good enough
to hit.

Data (RefCOCO-format sample splits): cap = the first reference caption of each image of the split
(captions.json restricted to the split's image ids); aref = `{expression} : {box}` and gcap =
`{box} : {expression}` for every expression of the split.
Config: refs, instances, images, captions, split (default "val"), tasks (default cap/aref/gcap),
batch_size, max_per_split (0: all).
Yields "{task}/nll", "{task}/nll_other_image", "{task}/reliance", "{task}/count" and for aref
"aref/loc_nll", "aref/loc_nll_other_image", "aref/loc_reliance"; "problems/*".
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import ml_collections
import numpy as np

from evaluation.data.coco import load_captions
from evaluation.data.refcoco import load_rec
from evaluation.evaluators import base
from evaluation.train_run import TrainRun
from model import tasks


def other_image_index(image_ids: Sequence[int], pool_ids: Sequence[int]) -> np.ndarray:
    """int[N]: for each row's image id, the index in `pool_ids` (the split's distinct image ids,
    sorted) of another image: the one half the pool away from the row's own. All -1 when the pool
    has a single image. The pairing uses the whole split, so a `max_per_split` that keeps only a
    few rows of one image still finds other images."""
    pool = list(pool_ids)
    n = len(pool)
    if n < 2:
        return np.full(len(image_ids), -1, np.int64)
    where = {image_id: k for k, image_id in enumerate(pool)}
    return np.asarray([(where[i] + n // 2) % n for i in image_ids], np.int64)


class Evaluator:
    def __init__(self, config: ml_collections.ConfigDict, run: TrainRun, shared: dict):
        self.run_ = run
        tok = run.tokenizer
        max_len = int(run.model_config.max_len)
        split = config.get("split", "val")
        limit = int(config.get("max_per_split", 0))
        wanted = tuple(config.get("tasks", tasks.TASKS))
        unknown = sorted(set(wanted) - set(tasks.TASKS))
        if unknown:
            raise ValueError(f"image_reliance: unknown task(s) {unknown}; expected {tasks.TASKS}")
        rec = load_rec(config.refs, config.instances, config.images, splits=(split,))
        self.problems = rec.problems
        everything = rec.split(split)
        exprs = everything[: limit or None]
        # Every image of the split, the pool the "other image" is drawn from (sorted by id).
        paths = {e.image_id: e.image_path for e in everything}
        self.pool_ids = sorted(paths)
        self.pool_paths = [paths[k] for k in self.pool_ids]
        # (image path, image id, Formatted) rows per task.
        self.rows: dict[str, list[tuple[str, int, tasks.Formatted]]] = {}
        if "cap" in wanted:
            caps = load_captions(config.captions, config.images, image_ids=set(paths))
            self.problems.update(caps.problems)
            ids = sorted(caps.image_paths)[: limit or None]
            self.rows["cap"] = [
                (caps.image_paths[k], k,
                 tasks.format_task("cap", tok, max_len=max_len, caption=caps.references[k][0]))
                for k in ids]
        for task in ("aref", "gcap"):
            if task in wanted:
                self.rows[task] = [
                    (e.image_path, e.image_id,
                     tasks.format_task(task, tok, max_len=max_len, phrase=e.sentence, box=e.box))
                    for e in exprs]
        self.predictor = base.shared_predictor(run, shared, int(config.get("batch_size", 32)))
        self.images = base.shared_images(run, shared)

    def other_paths(self, rows) -> list[str] | None:
        """The image each row is also scored with (another image of the split); None when the
        split has a single image."""
        other = other_image_index([r[1] for r in rows], self.pool_ids)
        if len(other) and other[0] < 0:
            return None
        return [self.pool_paths[k] for k in other]

    def _nll(self, params, rows, paths: list[str]) -> np.ndarray:
        """float32[N, L] token NLL of the rows, row i decoded against the image at paths[i]
        (each distinct image encoded once: base.encoded_rows)."""
        inputs = np.stack([r[2].inputs for r in rows])
        targets = np.stack([r[2].targets for r in rows])
        out = np.zeros(inputs.shape, np.float32)

        def encode(chunk):
            return self.predictor.encode(params, self.images.batch(chunk))

        for sel, gathered in base.encoded_rows(paths, encode, self.predictor.batch_size):
            out[sel] = self.predictor.token_nll(params, gathered, inputs[sel], targets[sel])
        return out

    def run(self, ctx: base.StepContext) -> Iterator[tuple[str, float]]:
        tok = self.run_.tokenizer
        loc_lo, loc_hi = tok.loc_start, tok.loc_start + tok.num_loc
        for task, rows in self.rows.items():
            other = self.other_paths(rows)
            if not rows or other is None:  # one image only: there is no "other" image
                continue
            mask = np.stack([r[2].loss_mask for r in rows]) > 0
            own = self._nll(ctx.params, rows, [r[0] for r in rows])
            swapped = self._nll(ctx.params, rows, other)
            masks = {"": mask}
            if task == "aref":
                targets = np.stack([r[2].targets for r in rows])
                masks["loc_"] = mask & (targets >= loc_lo) & (targets < loc_hi)
            for prefix, m in masks.items():
                if not m.any():  # every target cut by max_len: nothing to score
                    continue
                a, b = float(own[m].mean()), float(swapped[m].mean())
                yield f"{task}/{prefix}nll", a
                yield f"{task}/{prefix}nll_other_image", b
                yield f"{task}/{prefix}reliance", b - a
            # Rows whose target did not fit max_len (all-zero mask) are not scored: not counted.
            yield f"{task}/count", float(mask.any(axis=1).sum())
        yield from base.problems_metrics(self.problems)
