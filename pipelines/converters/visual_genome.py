"""Visual Genome (image_data.json + region_descriptions.json + images) -> webdataset samples.

region_descriptions.json is one JSON array of `{"id": image_id, "regions": [{"region_id",
"image_id", "phrase", "x", "y", "width", "height"}, ...]}` (5.4M regions over 108k images); it is
read element by element (`stream_json.iter_array`), so memory holds one image's regions at a time.
image_data.json (`{"image_id", "url", "width", "height", ...}` per image) is small and read whole.

Each region becomes a region named by its phrase (its box turned upright for an EXIF-tagged photo,
converters/orientation.py). Visual Genome has no captions: the alt-text is
the phrases of the `caption_regions` largest regions, deduplicated, joined by ". " (region phrases
are exactly the ARef/GCap material, and the annotate stage matches regions to the alt-text's
n-grams). Image files are found as IMAGES/<url's last two path parts> (VG_100K/1.jpg) or
IMAGES/<file name>.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.converters import stream_json
from pipelines.converters.orientation import upright_frame
from pipelines.converters.output import SampleWriter, box_problem, image_ext
from pipelines.record import boxes_from_xywh


def find_image(images_dir: Path, info: dict[str, Any]) -> Path | None:
    url = str(info.get("url") or "")
    parts = [p for p in url.split("/") if p]
    name = parts[-1] if parts else f"{info.get('image_id')}.jpg"
    for candidate in ([images_dir / parts[-2] / name] if len(parts) >= 2 else []) + [
            images_dir / name]:
        if candidate.is_file():
            return candidate
    return None


def _regions(entry: dict[str, Any], width: float, height: float,
             writer: SampleWriter) -> list[tuple[float, dict[str, Any]]]:
    """(area, region dict) of each valid region of one image; bad ones are counted."""
    out = []
    for r in entry.get("regions") or []:
        phrase = " ".join(str(r.get("phrase") or "").split())
        xywh = [r.get("x"), r.get("y"), r.get("width"), r.get("height")]
        problem = "empty_phrase" if not phrase else box_problem(xywh, width, height)
        if problem:
            writer.drop_region(problem)
            continue
        box = boxes_from_xywh(np.asarray(xywh, np.float64), height, width)[0]
        out.append((float(xywh[2]) * float(xywh[3]),
                    {"bbox": [float(v) for v in box], "phrase": phrase, "names": [phrase],
                     "region_id": r.get("region_id")}))
    return out


def alt_text(regions: list[tuple[float, dict[str, Any]]], count: int) -> str:
    """The phrases of the `count` largest regions (ties: file order), deduplicated."""
    order = sorted(range(len(regions)), key=lambda i: -regions[i][0])
    phrases: list[str] = []
    for i in order:
        p = regions[i][1]["phrase"].rstrip(".")
        if p.lower() not in {q.lower() for q in phrases}:
            phrases.append(p)
        if len(phrases) == count:
            break
    return ". ".join(phrases)


def convert(images_dir: Path, image_data: Path, region_descriptions: Path,
            writer: SampleWriter, caption_regions: int = 8) -> None:
    """Streams region_descriptions.json and writes one sample per image (module docstring)."""
    with image_data.open() as f:
        infos = {int(i.get("image_id", i.get("id", -1))): i for i in json.load(f)}
    with region_descriptions.open() as f:
        for n, entry in enumerate(stream_json.iter_array(f)):
            image_id = entry.get("id") if isinstance(entry, dict) else None
            if image_id is None and isinstance(entry, dict) and entry.get("regions"):
                image_id = entry["regions"][0].get("image_id")
            source = f"{region_descriptions.name}:entry{n}"
            info = infos.get(int(image_id)) if isinstance(image_id, int) else None
            if info is None:
                writer.dead_letter(source, "unknown_image_id", f"image id {image_id!r}")
                continue
            path = find_image(images_dir, info)
            if path is None:
                writer.dead_letter(source, "missing_image_file", str(info.get("url")))
                continue
            width, height = float(info["width"]), float(info["height"])
            upright, size, orientation = upright_frame(path, width, height)
            regions = _regions(entry, width, height, writer)
            for _, region in regions:
                region["bbox"] = [float(v) for v in upright(region["bbox"])]
            if not regions:
                writer.dead_letter(source, "no_regions", "no region with a phrase and a box")
                continue
            writer.add(f"vg{image_id:09d}", path.read_bytes(), image_ext(path),
                       alt_text(regions, caption_regions),
                       {"width": size[0], "height": size[1], "exif_orientation": orientation,
                        "image_id": image_id,
                        "url": info.get("url", ""), "regions": [r for _, r in regions]})
