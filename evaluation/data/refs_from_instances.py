"""RefCOCO-format refs built from COCO instances, to evaluate on any COCO-format dataset.

  python evaluation/data/refs_from_instances.py --instances COCO/annotations/instances_val2017.json \
      --output EVAL [--dataset refcoco --partition unc]
  python evaluation/run.py --workdir W \
      --config evaluation/configs/sample.py:refcoco,data_dir=EVAL,images_dir=COCO/val2017

Each non-crowd instance whose category occurs once in its image becomes a ref whose one sentence is
the category name ("giraffe": unambiguous there). Images are dealt to the partition's splits in
turn, by image id (refcoco_variants.SPLITS), so the transfer evaluator has a train split. Writes
EVAL/<dataset>/refs(<partition>).p (pickle protocol 2, the official files' field layout) and
EVAL/<dataset>/instances.json (a copy). These refs test the path, not a model: category names are
no referring expressions.
"""

from __future__ import annotations

import argparse
import collections
import json
import pickle
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from evaluation.data import refcoco_variants as rv  # noqa: E402


def build_refs(instances: dict, splits: tuple[str, ...]) -> list[dict]:
    """COCO instances -> refs in the official layout (ref_id, ann_id, image_id, split, sentences,
    file_name, category_id, sent_ids)."""
    names = {c["id"]: c["name"] for c in instances.get("categories", [])}
    by_image = collections.defaultdict(list)
    for a in instances.get("annotations", []):
        if not a.get("iscrowd") and a.get("category_id") in names:
            by_image[a["image_id"]].append(a)
    refs: list[dict] = []
    for k, image_id in enumerate(sorted(by_image)):
        counts = collections.Counter(a["category_id"] for a in by_image[image_id])
        for a in sorted(by_image[image_id], key=lambda a: a["id"]):
            if counts[a["category_id"]] != 1:
                continue
            name, n = names[a["category_id"]], len(refs)
            refs.append({"ref_id": n, "ann_id": a["id"], "image_id": image_id,
                         "split": splits[k % len(splits)], "category_id": a["category_id"],
                         "file_name": f"{image_id:012d}_{a['id']}.jpg", "sent_ids": [n],
                         "sentences": [{"tokens": name.split(), "raw": name, "sent_id": n,
                                        "sent": name}]})
    return refs


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--instances", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--dataset", default="refcoco")
    p.add_argument("--partition", default="")
    args = p.parse_args(argv)
    try:
        dataset, partition = rv.resolve(args.dataset, args.partition)
    except ValueError as e:
        raise SystemExit(f"refs_from_instances: {e}") from None
    src = Path(args.instances)
    if not src.is_file():
        raise SystemExit(f"refs_from_instances: --instances {src} not found")
    refs = build_refs(json.loads(src.read_text()), rv.SPLITS[(dataset, partition)])
    out = Path(args.output) / dataset
    out.mkdir(parents=True, exist_ok=True)
    (out / f"refs({partition}).p").write_bytes(pickle.dumps(refs, protocol=2))
    shutil.copyfile(src, out / "instances.json")
    print(f"refs_from_instances: {len(refs)} refs -> {out}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
