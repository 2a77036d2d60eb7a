"""COCO-format dataset (images + instances_*.json + captions_*.json) -> webdataset samples.

One sample per image: the alt-text is the image's first caption (lowest caption id; COCO has five),
each non-crowd instance a region named by its category ("giraffe"). Crowd instances cover a group
(`iscrowd` 1) and are dropped as `crowd`. Images without a caption are dead-lettered
(`no_caption`), so are images whose file is missing (`missing_image_file`). Boxes go through
`pipelines.record.boxes_from_xywh` ([x, y, w, h] pixels -> normalized [ymin, xmin, ymax, xmax]),
then into the upright frame of an EXIF-tagged photo (converters/orientation.py).
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np

from pipelines.converters.orientation import upright_frame
from pipelines.converters.output import SampleWriter, box_problem, image_ext
from pipelines.record import boxes_from_xywh


def _load(path: Path) -> dict:
    with path.open() as f:
        return json.load(f)


def convert(images_dir: Path, instances: Path, captions: Path, writer: SampleWriter) -> None:
    """Writes one sample per image of `instances` into `writer` (see the module docstring)."""
    inst = _load(instances)
    names = {c["id"]: str(c["name"]) for c in inst.get("categories", [])}
    caps: dict[int, list[tuple[int, str]]] = collections.defaultdict(list)
    for c in _load(captions).get("annotations", []):
        caps[c.get("image_id")].append((int(c.get("id", 0)), str(c.get("caption", "")).strip()))
    anns = collections.defaultdict(list)
    images = {im["id"]: im for im in inst.get("images", [])}
    for a in inst.get("annotations", []):
        if a.get("image_id") not in images:
            writer.drop_region("unknown_image_id")
            continue
        anns[a["image_id"]].append(a)
    for image_id in sorted(images):
        im = images[image_id]
        source = f"{instances.name}:image{image_id}"
        path = images_dir / im["file_name"]
        if not path.is_file():
            writer.dead_letter(source, "missing_image_file", str(path))
            continue
        caption = next((c for _, c in sorted(caps.get(image_id, [])) if c), "")
        if not caption:
            writer.dead_letter(source, "no_caption", "no caption in the captions file")
            continue
        width, height = float(im["width"]), float(im["height"])
        upright, size, orientation = upright_frame(path, width, height)
        regions = []
        for a in sorted(anns[image_id], key=lambda a: a.get("id", 0)):
            name = names.get(a.get("category_id"))
            problem = ("crowd" if a.get("iscrowd") else "unknown_category" if name is None
                       else box_problem(a.get("bbox"), width, height))
            if problem:
                writer.drop_region(problem)
                continue
            box = boxes_from_xywh(np.asarray(a["bbox"], np.float64), height, width)[0]
            regions.append({"bbox": [float(v) for v in upright(box)], "phrase": name,
                            "names": [name],
                            "annotation_id": a.get("id")})
        writer.add(f"{int(image_id):012d}", path.read_bytes(), image_ext(path), caption,
                   {"width": size[0], "height": size[1], "exif_orientation": orientation,
                    "image_id": image_id,
                    "file_name": im["file_name"], "url": im.get("coco_url", ""),
                    "regions": regions})
