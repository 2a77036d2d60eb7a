"""Acceptance (issue #17): real COCO photos through convert -> annotate --labeler reference put a
box on every image whose caption names one of its instance categories, singular or plural.

The expected set is computed here from the COCO json alone, with plain string forms (the name, +s,
+es, and the few irregular plurals COCO's names have), independently of pipelines.labelers.inflect.
"""

from __future__ import annotations

import json
import re

import annotate_fixtures as af

from pipelines import annotate, convert

_IRREGULAR = {"person": ["people", "persons"], "mouse": ["mice"], "knife": ["knives"],
              "bus": ["buses", "busses"], "sheep": ["sheep"], "skis": ["ski"]}


def _forms(name: str) -> list[str]:
    return [name, name + "s", name + "es", *_IRREGULAR.get(name, [])]


def _expected(coco, plural_only: bool = False) -> set[str]:
    """Keys of images whose first caption names one of their non-crowd categories (plural_only:
    only in a plural form, never the bare name)."""
    inst = json.loads((coco / "annotations/instances_train2017.json").read_text())
    caps = json.loads((coco / "annotations/captions_train2017.json").read_text())
    names = {c["id"]: c["name"] for c in inst["categories"]}
    first: dict[int, tuple[int, str]] = {}
    for c in caps["annotations"]:
        if c["image_id"] not in first or c["id"] < first[c["image_id"]][0]:
            first[c["image_id"]] = (c["id"], c["caption"].lower())
    expected = set()
    for a in inst["annotations"]:
        caption = first.get(a["image_id"], (0, ""))[1]
        if a["iscrowd"] or not caption:
            continue
        forms = _forms(names[a["category_id"]])
        if plural_only and re.search(rf"\b{re.escape(forms[0])}\b", caption):
            continue
        pattern = r"\b(" + "|".join(map(re.escape, forms[1:] if plural_only else forms)) + r")\b"
        if re.search(pattern, caption):
            expected.add(f"{a['image_id']:012d}")
    return expected


def test_every_image_whose_caption_names_a_category_gets_a_box(coco_mini, tmp_path):
    convert.run(["--format", "coco", "--images", str(coco_mini / "train2017"),
                 "--instances", str(coco_mini / "annotations/instances_train2017.json"),
                 "--captions", str(coco_mini / "annotations/captions_train2017.json"),
                 "--output", str(tmp_path / "web")])
    # Ground-truth boxes: keep thin ones (a baseball bat 5 px wide is real), so no minimum side.
    manifest = annotate.run(["--input", str(tmp_path / "web/*.tar"), "--output",
                             str(tmp_path / "shards"), "--labeler", "reference",
                             "--min_box_size", "0"])
    assert manifest["counts"]["written"] == 80 and manifest["counts"]["balanced"]
    boxed = {r.key for r in af.load_shards(tmp_path / "shards") if r.phrases}
    expected = _expected(coco_mini)
    assert len(expected) >= 50  # the check means something: most captions name a category
    assert expected - boxed == set()
    assert len(_expected(coco_mini, plural_only=True)) >= 5  # plurals are part of the check
