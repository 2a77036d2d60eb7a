"""The official RefCOCO-family downloads: which dataset has which partitions and split names.

Layout of the official files (lichengunc/refer): `<data_dir>/<dataset>/refs(<partition>).p` next
to `<data_dir>/<dataset>/instances.json`, images from COCO train2014.

  dataset    partition  splits
  refcoco    unc        train, val, testA, testB
  refcoco    google     train, val, test
  refcoco+   unc        train, val, testA, testB
  refcocog   umd        train, val, test
  refcocog   google     train, val

The frozen-encoder transfer trains on `train` and every other split is an evaluation split.
"""

from __future__ import annotations

SPLITS: dict[tuple[str, str], tuple[str, ...]] = {
    ("refcoco", "unc"): ("train", "val", "testA", "testB"),
    ("refcoco", "google"): ("train", "val", "test"),
    ("refcoco+", "unc"): ("train", "val", "testA", "testB"),
    ("refcocog", "umd"): ("train", "val", "test"),
    ("refcocog", "google"): ("train", "val"),
}
DEFAULT_PARTITION = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
TRAIN_SPLIT = "train"


def resolve(dataset: str, partition: str = "") -> tuple[str, str]:
    """(dataset, partition) checked against the official list; "" picks the default partition."""
    if dataset not in DEFAULT_PARTITION:
        raise ValueError(f"unknown dataset {dataset!r}: use one of {sorted(DEFAULT_PARTITION)}")
    partition = partition or DEFAULT_PARTITION[dataset]
    if (dataset, partition) not in SPLITS:
        known = [p for d, p in SPLITS if d == dataset]
        raise ValueError(f"{dataset} has no partition {partition!r}: use one of {known}")
    return dataset, partition


def eval_splits(dataset: str, partition: str) -> tuple[str, ...]:
    """The official evaluation splits (every split but train)."""
    return tuple(s for s in SPLITS[resolve(dataset, partition)] if s != TRAIN_SPLIT)


def refs_path(data_dir: str, dataset: str, partition: str) -> str:
    return f"{data_dir}/{dataset}/refs({partition}).p"


def instances_path(data_dir: str, dataset: str) -> str:
    return f"{data_dir}/{dataset}/instances.json"
