"""The held-out evaluation directory in RefCOCO / COCO formats.

  eval/images/{file_name}      the JPEGs
  eval/instances.json          COCO instances (+ per-image scene labels, + per-box colour/size)
  eval/refs.json               the fields of the official refs(unc).p, as JSON (no pickle)
  eval/captions.json           COCO captions, 2-3 clean captions per image
  eval/stats.json              the REC splits' statistics beside RefCOCO's (corpus/stats.py)

Images come from the "eval" seed stream, never the training one. Every image belongs to exactly one
split by its index (6 of every 10 to `train`, for the frozen-encoder transfer evaluator, then
val, val, testA, testB), so splits never share an image and do not depend on the image count.
`file_name` in refs.json is the image's file name (the official one appends the annotation id
and names no real file); readers should key on `image_id` either way.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from pipelines.corpus import annotations, captions, parallel, refexp, stats, vocab, writers
from pipelines.corpus.render import render_sample
from pipelines.corpus.scene import TEXT, Preset, sample_rng

SPLIT_CYCLE = ("train",) * 6 + ("val", "val", "testA", "testB")
SPLITS = ("train", "val", "testA", "testB")
CATEGORIES = [
    {"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(vocab.SHAPES)
]


def split_of(index: int) -> str:
    return SPLIT_CYCLE[index % len(SPLIT_CYCLE)]


def file_name(index: int) -> str:
    return f"synth_eval_{index:06d}.jpg"


def make_item(seed: int, index: int, preset: Preset = Preset()) -> dict[str, Any]:
    """Everything about eval image `index` except the corpus-wide ids (assigned in order later)."""
    scene = render_sample(seed, "eval", index, preset)
    rng = sample_rng(seed, "eval", index, TEXT)
    w, h = scene.spec.width, scene.spec.height
    objects = []
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        objects.append(
            {
                "category_id": vocab.SHAPES.index(obj.spec.shape) + 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": obj.visible_pixels,
                "color": obj.spec.color,
                "size": obj.spec.size,
                "occluded_fraction": obj.occluded_fraction,
            }
        )
    return {
        "jpeg": scene.jpeg(),
        "image": {
            "file_name": file_name(index),
            "width": w,
            "height": h,
            "split": split_of(index),
            **annotations.scene_label(scene),
        },
        "objects": objects,
        "expressions": refexp.referring_expressions(list(scene.objects), w, h, rng),
        "captions": captions.captions(scene, rng),
    }


def _raw(sent: str, index: int) -> str:
    """Annotator-style raw text; `sent` stays the normalized lowercase form."""
    return sent[0].upper() + sent[1:] + ("." if index % 3 == 0 else "")


def write_eval(out_dir: Path, seed: int, count: int, workers: int = 1,
               preset: Preset = Preset()) -> dict[str, Any]:
    """Writes the eval directory; returns its paths and counts."""
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, anns, refs, caps = [], [], [], []
    split_counts = dict.fromkeys(SPLITS, 0)
    num_sentences = 0
    items = parallel.ordered_map(functools.partial(make_item, preset=preset), seed,
                                 count, workers)
    for index, item in enumerate(items):
        image_id = index + 1
        image = {"id": image_id, **item["image"]}
        images.append(image)
        split_counts[image["split"]] += 1
        writers.write_bytes(image_dir / image["file_name"], item["jpeg"])
        for obj, sentences in zip(item["objects"], item["expressions"], strict=True):
            ann_id = len(anns) + 1
            anns.append({"id": ann_id, "image_id": image_id, "iscrowd": 0, **obj})
            if not sentences:
                continue
            first_sent = num_sentences
            num_sentences += len(sentences)
            sents = [
                {
                    "sent": s,
                    "tokens": s.split(),
                    "raw": _raw(s, first_sent + k),
                    "sent_id": first_sent + k,
                }
                for k, s in enumerate(sentences)
            ]
            refs.append(
                {
                    "ref_id": len(refs),
                    "ann_id": ann_id,
                    "image_id": image_id,
                    "split": image["split"],
                    "sentences": sents,
                    "sent_ids": [s["sent_id"] for s in sents],
                    "category_id": obj["category_id"],
                    "file_name": image["file_name"],
                }
            )
        for caption in item["captions"]:
            caps.append({"id": len(caps) + 1, "image_id": image_id, "caption": caption})

    info = {"description": "LocCa synthetic sample corpus (eval stream)", "version": "1.0"}
    coco_images = [{k: im[k] for k in ("id", "file_name", "width", "height")} for im in images]
    paths = {
        "instances": out_dir / "instances.json",
        "refs": out_dir / "refs.json",
        "captions": out_dir / "captions.json",
        "stats": out_dir / "stats.json",
    }
    writers.write_json(
        paths["instances"],
        {
            "info": info,
            "licenses": [],
            "images": images,
            "annotations": anns,
            "categories": CATEGORIES,
        },
    )
    writers.write_json(paths["refs"], refs)
    writers.write_json(paths["stats"], stats.eval_stats(images, anns, refs))
    writers.write_json(
        paths["captions"],
        {
            "info": info,
            "licenses": [],
            "images": coco_images,
            "annotations": caps,
        },
    )
    return {
        "eval_dir": out_dir,
        "images_dir": image_dir,
        **paths,
        "num_eval": len(images),
        "num_annotations": len(anns),
        "num_refs": len(refs),
        "num_sentences": num_sentences,
        "split_counts": split_counts,
    }
