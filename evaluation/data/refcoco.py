"""RefCOCO-format referring-expression data -> per-expression REC examples.

Two layouts are read:
- official: `refs(unc).p` / `refs(umd).p` / `refs(google).p` (Python pickles, read with the
  restricted unpickler in safe_pickle.py) next to COCO `instances.json`; images in a COCO image dir
  (datasets, partitions and their split names: refcoco_variants.py).
- JSON: the same list of ref dicts as `refs.json` (the sample corpus's `DIR/eval/`).
A ref: {ref_id, ann_id, image_id, split, sentences: [{sent, tokens, raw}], category_id, file_name}.
The ref's own file_name carries an annotation suffix in the official files, so the image file is
taken from instances.json's image entry instead.

Bad entries (unknown image or annotation id, a box outside its image, a missing image file) are
counted per reason in RecData.problems and skipped: one bad line must not stop a scheduled job.
"""

from __future__ import annotations

import collections
import dataclasses
import json

import numpy as np
from etils import epath

from evaluation.data import safe_pickle
from pipelines import record

# A COCO box may overhang its image by a rounding error; beyond this many pixels it is invalid.
_BOX_SLACK_PX = 1.0


@dataclasses.dataclass(frozen=True)
class RecExample:
    """One referring expression. box: normalized [ymin, xmin, ymax, xmax] of the referred object."""

    ref_id: int
    image_id: int
    image_path: str
    split: str
    sentence: str
    box: tuple[float, float, float, float]
    # The image's other annotated objects, normalized like `box`: a miss that lands on one of
    # them picked the wrong object (rec_common.split_metrics' wrong_object).
    others: tuple[tuple[float, float, float, float], ...] = ()


@dataclasses.dataclass
class RecData:
    examples: list[RecExample]
    problems: collections.Counter  # reason -> count of skipped refs/sentences

    def split(self, name: str) -> list[RecExample]:
        return [e for e in self.examples if e.split == name]


class RefsFileError(ValueError):
    """A refs file that is not a RefCOCO refs list (truncated, corrupt or refused)."""


def load_refs(path: str | epath.Path) -> list[dict]:
    """Reads refs from a `.p` pickle (restricted) or a `.json` file.

    Raises RefsFileError, one line naming the file, when it is not a refs list: a truncated or
    corrupt file, or a pickle that asks to run code (refused by safe_pickle).
    """
    path = epath.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"refs file not found: {path}")
    try:
        refs = (json.loads(path.read_text()) if path.suffix == ".json"
                else safe_pickle.safe_load(path))
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same: a bad file
        detail = " ".join(str(e).split())[:200]
        raise RefsFileError(f"{path} is not a RefCOCO refs file ({type(e).__name__}: {detail}); "
                            "download it again from the official source") from None
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise RefsFileError(f"{path}: expected a list of ref dicts, got {type(refs).__name__}")
    return refs


def check_splits(refs: list[dict], wanted: tuple[str, ...], path: str) -> None:
    """Every wanted split has refs in the file; else one line naming the splits it has."""
    present = sorted({str(r.get("split")) for r in refs})
    missing = [s for s in wanted if s not in present]
    if missing:
        raise ValueError(f"{path} has no split {', '.join(map(repr, missing))}; its splits are "
                         f"{', '.join(present) or 'none'} (set splits= in the eval config)")


def coco_box_to_normalized(
    bbox: list[float], *, height: float, width: float
) -> tuple[float, float, float, float] | None:
    """COCO [x, y, w, h] pixels -> normalized [ymin, xmin, ymax, xmax] (record.boxes_from_xywh),
    or None when the box is empty or lies (beyond a pixel of slack) outside the image."""
    x, y, w, h = (float(v) for v in bbox)
    s = _BOX_SLACK_PX
    if w <= 0 or h <= 0 or x < -s or y < -s or x + w > width + s or y + h > height + s:
        return None
    box = record.boxes_from_xywh([x, y, w, h], height, width, dtype=np.float64)[0]
    return tuple(float(v) for v in box)


def resolve_image(images_dir: epath.Path, file_name: str) -> epath.Path:
    path = images_dir / file_name
    if not path.suffix:
        path = path.with_suffix(".jpg")
    return path


def load_rec(
    refs_path: str,
    instances_path: str,
    images_dir: str,
    splits: tuple[str, ...] | None = None,
    check_images: bool = True,
) -> RecData:
    """Joins refs with COCO instances into one RecExample per sentence (the RefCOCO protocol scores
    every expression). splits: keep only these (None: all); each must be in the file."""
    refs = load_refs(refs_path)
    if splits is not None:
        check_splits(refs, tuple(splits), str(refs_path))
    inst_path = epath.Path(instances_path)
    if not inst_path.exists():
        raise FileNotFoundError(f"instances file not found: {inst_path}")
    instances = json.loads(inst_path.read_text())
    images = {im["id"]: im for im in instances.get("images", [])}
    anns = {a["id"]: a for a in instances.get("annotations", [])}
    by_image = collections.defaultdict(list)
    for a in anns.values():
        by_image[a.get("image_id")].append(a)
    images_dir = epath.Path(images_dir)
    problems: collections.Counter = collections.Counter()
    examples: list[RecExample] = []
    exists_cache: dict[str, bool] = {}
    for ref in refs:
        if splits is not None and ref.get("split") not in splits:
            continue
        image = images.get(ref.get("image_id"))
        if image is None:
            problems["unknown_image_id"] += 1
            continue
        ann = anns.get(ref.get("ann_id"))
        if ann is None or ann.get("image_id") != image["id"]:
            problems["unknown_annotation_id"] += 1
            continue
        box = coco_box_to_normalized(ann["bbox"], height=image["height"], width=image["width"])
        if box is None:
            problems["box_outside_image"] += 1
            continue
        path = resolve_image(images_dir, image["file_name"])
        if check_images:
            key = str(path)
            if key not in exists_cache:
                exists_cache[key] = path.exists()
            if not exists_cache[key]:
                problems["missing_image_file"] += 1
                continue
        others = tuple(
            b for b in (coco_box_to_normalized(a["bbox"], height=image["height"],
                                               width=image["width"])
                        for a in by_image[image["id"]] if a["id"] != ann["id"] and "bbox" in a)
            if b is not None)
        sentences = [s.get("sent") or s.get("raw") or "" for s in ref.get("sentences", [])]
        for sent in sentences:
            if not sent.strip():
                problems["empty_sentence"] += 1
                continue
            examples.append(
                RecExample(
                    ref_id=int(ref.get("ref_id", -1)),
                    image_id=int(image["id"]),
                    image_path=str(path),
                    split=str(ref.get("split")),
                    sentence=sent.strip(),
                    box=box,
                    others=others,
                )
            )
    return RecData(examples=examples, problems=problems)
