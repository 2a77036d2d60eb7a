"""Generates the built-in synthetic sample corpus (offline, deterministic per seed).

  python pipelines/sample_corpus.py --output runs/corpus --num_train 2000 --num_eval 300 --seed 0
  (--preset hard: the earlier, harder generator (many small objects of any shape);
   --max_objects 1: one object per image, a corpus that tests localising without grounding)

Writes
  OUTPUT/web/shard-00000.tar ...  img2dataset webdataset layout: {key}.jpg, {key}.json, {key}.txt;
                                  the JSON carries ground-truth `regions` and a `scene` label
  OUTPUT/eval/images/*.jpg        held-out images (a separate seed stream)
  OUTPUT/eval/instances.json      COCO instances (+ scene labels per image, colour/size per box)
  OUTPUT/eval/refs.json           RefCOCO refs(unc) fields; splits train/val/testA/testB
  OUTPUT/eval/captions.json       COCO captions, 2-3 clean captions per image
  OUTPUT/eval/stats.json          referent size, same-shape distractors, expression length (vs RefCOCO)

The same arguments give byte-identical files. Python API: `generate(output_dir, num_train, ...)`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script (`python pipelines/sample_corpus.py`): make `import pipelines` resolve to this
    # checkout even without `pip install -e .`.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.corpus import eval_set, scene, web  # noqa: E402

# Below this many images, spawning worker processes costs more than it saves.
_PARALLEL_THRESHOLD = 400


def _default_workers(total: int) -> int:
    return 1 if total < _PARALLEL_THRESHOLD else max(1, min(4, os.cpu_count() or 1))


def _remove_stale(directory: Path, pattern: str, keep: set[Path]) -> None:
    """Deletes our own outputs left by an earlier, larger run into the same directory."""
    for path in directory.glob(pattern):
        if path not in keep:
            path.unlink()


def generate(
    output_dir: str | os.PathLike,
    num_train: int,
    num_eval: int,
    seed: int,
    shard_size: int = 500,
    workers: int | None = None,
    max_objects: int = scene.MAX_OBJECTS,
    preset: str = "refcoco",
) -> dict[str, Any]:
    """Writes the corpus under `output_dir`; returns its paths and counts.

    Returns a dict with: output_dir, web_dir, shards (list of Paths), num_train, eval_dir,
    images_dir, instances, refs, captions (Paths), num_eval, num_annotations, num_refs,
    num_sentences, split_counts ({split: images}), seconds.
    `workers` only changes speed, never the bytes (None: 1 for small corpora, else up to 4).
    `preset` is the scene distribution (scene.PRESETS: `refcoco`, RefCOCO-shaped, the default;
    `hard`, the earlier generator). `max_objects` (1..6) bounds the objects per image, e.g. 1 for
    a corpus that needs localising but no grounding (a diagnostic, RESULTS.md).
    """
    if num_train < 0 or num_eval < 0:
        raise ValueError(f"counts must be >= 0, got num_train={num_train}, num_eval={num_eval}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    scene_preset = scene.Preset(preset, max_objects)  # raises ValueError on a bad value
    start = time.perf_counter()
    root = Path(output_dir)
    n_workers = workers if workers is not None else _default_workers(num_train + num_eval)
    web_dir = root / "web"
    web_dir.mkdir(parents=True, exist_ok=True)
    shards = web.write_shards(web_dir, seed, num_train, shard_size, n_workers, scene_preset)
    _remove_stale(web_dir, "shard-*.tar", set(shards))
    ev = eval_set.write_eval(root / "eval", seed, num_eval, n_workers, scene_preset)
    _remove_stale(
        ev["images_dir"],
        "synth_eval_*.jpg",
        {ev["images_dir"] / eval_set.file_name(i) for i in range(num_eval)},
    )
    return {
        "output_dir": root,
        "web_dir": web_dir,
        "shards": shards,
        "num_train": num_train,
        "preset": preset,
        **ev,
        "seconds": round(time.perf_counter() - start, 2),
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True, help="output directory (created if missing)")
    parser.add_argument("--num_train", type=int, required=True, help="training images (web tars)")
    parser.add_argument("--num_eval", type=int, required=True, help="held-out evaluation images")
    parser.add_argument(
        "--seed", type=int, required=True, help="corpus seed (same seed, same bytes)"
    )
    parser.add_argument("--shard_size", type=int, default=500, help="samples per tar shard")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: auto)")
    parser.add_argument("--preset", default="refcoco", choices=scene.PRESETS,
                        help="scene distribution: refcoco (RefCOCO-shaped, default) or hard")
    parser.add_argument("--max_objects", type=int, default=scene.MAX_OBJECTS,
                        help=f"objects per image, at most (1..{scene.MAX_OBJECTS}; 1: a "
                             "localisation-only diagnostic corpus)")

    def one_line_error(message: str) -> None:
        raise SystemExit(f"sample_corpus: {message} (see --help)")

    parser.error = one_line_error  # type: ignore[method-assign]
    args = parser.parse_args(argv)
    for name in ("num_train", "num_eval"):
        if getattr(args, name) < 0:
            raise SystemExit(f"sample_corpus: --{name} must be >= 0, got {getattr(args, name)}")
    if args.shard_size < 1:
        raise SystemExit(f"sample_corpus: --shard_size must be >= 1, got {args.shard_size}")
    if not 1 <= args.max_objects <= scene.MAX_OBJECTS:
        raise SystemExit(f"sample_corpus: --max_objects must be in [1, {scene.MAX_OBJECTS}], "
                         f"got {args.max_objects}")
    if args.workers is not None and args.workers < 1:
        raise SystemExit(f"sample_corpus: --workers must be >= 1, got {args.workers}")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"sample_corpus: --output {out} is a file; pass a directory path")
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    try:
        info = generate(
            args.output, args.num_train, args.num_eval, args.seed, args.shard_size, args.workers,
            args.max_objects, args.preset,
        )
    except OSError as e:
        raise SystemExit(f"sample_corpus: cannot write {args.output}: {e.strerror or e}") from None
    splits = ", ".join(f"{k} {v}" for k, v in info["split_counts"].items())
    print(
        f"sample corpus ({info['preset']}) in {info['output_dir']} ({info['seconds']} s)\n"
        f"  web:  {info['num_train']} images in {len(info['shards'])} shards: "
        f"{info['web_dir']}/shard-*.tar\n"
        f"  eval: {info['num_eval']} images ({splits}), {info['num_refs']} refs / "
        f"{info['num_sentences']} expressions: {info['eval_dir']}"
    )


if __name__ == "__main__":
    main()
