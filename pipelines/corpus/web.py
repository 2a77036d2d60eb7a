"""The training stream: img2dataset-style webdataset shards of (jpg, txt, json) samples.

Layout: `web/shard-00000.tar`, ...; per sample `{key}.jpg`, `{key}.json`, `{key}.txt`, members in
that order. The JSON holds img2dataset's metadata fields plus the ground truth (`regions`, `scene`);
a region's `names` include the referring expressions its alt-text uses for that object.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from pipelines.corpus import alt_text, annotations, parallel, writers
from pipelines.corpus.render import render_sample
from pipelines.corpus.scene import REFEXP, TEXT, Preset, sample_rng

URL_PREFIX = "https://synthetic.invalid/locca-sample"


def sample_key(index: int) -> str:
    return f"{index:09d}"


def make_sample(seed: int, index: int,
                preset: Preset = Preset()) -> tuple[str, bytes, bytes, bytes]:
    """(key, jpeg, txt, json) of training sample `index`."""
    scene = render_sample(seed, "web", index, preset)
    key = sample_key(index)
    alt = alt_text.alt_text(
        scene, sample_rng(seed, "web", index, TEXT), sample_rng(seed, "web", index, REFEXP)
    )
    text = alt.text
    w, h = scene.spec.width, scene.spec.height
    meta: dict[str, Any] = {
        "key": key,
        "url": f"{URL_PREFIX}/{seed}/{key}.jpg",
        "caption": text,
        "width": w,
        "height": h,
        "original_width": w,
        "original_height": h,
        "status": "success",
        "error_message": None,
        "regions": [
            annotations.region(o, w, h, e)
            for o, e in zip(scene.objects, alt.expressions, strict=True)
        ],
        "scene": annotations.scene_label(scene),
    }
    return key, scene.jpeg(), text.encode("utf-8"), writers.dumps(meta).encode("utf-8")


def write_shards(
    out_dir: Path, seed: int, count: int, shard_size: int, workers: int = 1,
    preset: Preset = Preset(),
) -> list[Path]:
    """Writes `count` samples to `out_dir/shard-%05d.tar`; returns the shard paths in order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    members: list[tuple[str, bytes]] = []

    def flush() -> None:
        path = out_dir / f"shard-{len(paths):05d}.tar"
        writers.write_tar(path, members)
        paths.append(path)
        members.clear()

    for n, (key, jpg, txt, meta) in enumerate(
        parallel.ordered_map(functools.partial(make_sample, preset=preset), seed, count,
                             workers),
        start=1,
    ):
        members += [(f"{key}.jpg", jpg), (f"{key}.json", meta), (f"{key}.txt", txt)]
        if n % shard_size == 0:
            flush()
    if members:
        flush()
    return paths
