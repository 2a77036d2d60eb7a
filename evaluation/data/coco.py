"""COCO-format captions and image-level labels for the captioning and linear-probe evaluators."""

from __future__ import annotations

import collections
import dataclasses
import json

from etils import epath

from evaluation.data.refcoco import resolve_image


@dataclasses.dataclass
class CaptionData:
    image_paths: dict[int, str]  # image id -> file
    references: dict[int, list[str]]  # image id -> reference captions
    problems: collections.Counter


def _read_json(path: str) -> dict:
    p = epath.Path(path)
    if not p.exists():
        raise FileNotFoundError(f"file not found: {p}")
    return json.loads(p.read_text())


def load_captions(
    captions_path: str, images_dir: str, image_ids: set[int] | None = None
) -> CaptionData:
    """Reads COCO captions ({images, annotations: {image_id, caption}}); image_ids restricts the set
    (e.g. to one REC split's images). Images without captions or files are counted and skipped."""
    data = _read_json(captions_path)
    images_dir = epath.Path(images_dir)
    problems: collections.Counter = collections.Counter()
    images = {im["id"]: im for im in data.get("images", [])}
    refs: dict[int, list[str]] = collections.defaultdict(list)
    for ann in data.get("annotations", []):
        if ann.get("image_id") not in images:
            problems["unknown_image_id"] += 1
            continue
        if str(ann.get("caption", "")).strip():
            refs[ann["image_id"]].append(str(ann["caption"]).strip())
    paths: dict[int, str] = {}
    for image_id, image in sorted(images.items()):
        if image_ids is not None and image_id not in image_ids:
            continue
        if not refs.get(image_id):
            problems["image_without_captions"] += 1
            continue
        path = resolve_image(images_dir, image["file_name"])
        if not path.exists():
            problems["missing_image_file"] += 1
            continue
        paths[image_id] = str(path)
    return CaptionData(paths, {k: refs[k] for k in paths}, problems)


def load_image_labels(
    instances_path: str, images_dir: str, fields: tuple[str, ...]
) -> tuple[dict[int, str], dict[str, dict[int, str]]]:
    """Image-level labels stored as extra fields of COCO image entries (the sample corpus writes
    `num_objects` and `dominant_shape`). Returns (image id -> path, field -> image id -> label);
    images lacking a field are left out of that field's map."""
    data = _read_json(instances_path)
    images_dir = epath.Path(images_dir)
    paths: dict[int, str] = {}
    labels: dict[str, dict[int, str]] = {f: {} for f in fields}
    for image in data.get("images", []):
        path = resolve_image(images_dir, image["file_name"])
        paths[image["id"]] = str(path)
        for f in fields:
            if f in image:
                labels[f][image["id"]] = str(image[f])
    return paths, labels
