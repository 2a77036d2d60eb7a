"""Linear probe on frozen, mean-pooled encoder features: a holistic check that localization
pretraining did not cost image-level understanding.

Closed-form ridge regression onto one-hot labels (as big_vision's few-shot evaluator does): exact,
deterministic and instant, so no probe training hyper-parameters to tune per checkpoint.
Labels: image-level fields of COCO instances.json image entries (the sample corpus writes
`num_objects` and `dominant_shape`). Train images: those of the REC `train_split` in refs; test: the
rest of the images that have the label.
Config: instances, images, refs, train_split ("train"), fields, l2 (ridge strength), encoder.
Yields "{field}/accuracy", "{field}/chance" (majority-class rate on test), "{field}/count".
"""

from __future__ import annotations

from collections.abc import Iterator

import ml_collections
import numpy as np

from evaluation.data.coco import load_image_labels
from evaluation.data.refcoco import load_refs
from evaluation.evaluators import base
from evaluation.evaluators.features import features
from evaluation.train_run import TrainRun


def ridge_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                num_classes: int, l2: float) -> np.ndarray:
    """x float[M, D], y int[M] -> predicted int[T] for x_test float[T, D] (features standardized
    with the train statistics, bias via a constant column)."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    a = np.concatenate([(x_train - mu) / sd, np.ones((len(x_train), 1))], 1).astype(np.float64)
    b = np.concatenate([(x_test - mu) / sd, np.ones((len(x_test), 1))], 1).astype(np.float64)
    y = np.eye(num_classes)[y_train] * 2.0 - 1.0
    w = np.linalg.solve(a.T @ a + l2 * np.eye(a.shape[1]), a.T @ y)
    return np.argmax(b @ w, axis=1)


class Evaluator:
    def __init__(self, config: ml_collections.ConfigDict, run: TrainRun, shared: dict):
        self.shared = shared
        self.fields = tuple(config.get("fields", ("num_objects", "dominant_shape")))
        self.l2 = float(config.get("l2", 10.0))
        self.source = config.get("encoder", "checkpoint")
        self.batch_size = int(config.get("batch_size", 32))
        paths, labels = load_image_labels(config.instances, config.images, self.fields)
        train_split = config.get("train_split", "train")
        train_ids = {r["image_id"] for r in load_refs(config.refs) if r.get("split") == train_split}
        self.paths = paths
        self.tasks = {}
        for f in self.fields:
            lab = labels[f]
            classes = sorted(set(lab.values()))
            if len(classes) < 2:
                continue
            tr = sorted(i for i in lab if i in train_ids)
            te = sorted(i for i in lab if i not in train_ids)
            if tr and te:
                self.tasks[f] = (tr, te, [classes.index(lab[i]) for i in tr],
                                 [classes.index(lab[i]) for i in te], len(classes))
        self.images = base.shared_images(run, shared)

    def run(self, ctx: base.StepContext) -> Iterator[tuple[str, float]]:
        ids = sorted({i for tr, te, *_ in self.tasks.values() for i in (*tr, *te)})
        if not ids:
            return
        feats = features(self.source, [self.paths[i] for i in ids], ctx, self.shared,
                         self.images, self.batch_size).mean(axis=1)  # GAP over tokens
        row = {i: k for k, i in enumerate(ids)}
        for f, (tr, te, ytr, yte, n) in self.tasks.items():
            pred = ridge_probe(feats[[row[i] for i in tr]], np.asarray(ytr),
                               feats[[row[i] for i in te]], n, self.l2)
            yte = np.asarray(yte)
            yield f"{f}/accuracy", float((pred == yte).mean())
            yield f"{f}/chance", float(np.bincount(yte).max() / len(yte))
            yield f"{f}/count", float(len(yte))
