"""The eval set's REC statistics, beside RefCOCO's: what the sample task is shaped like.

Written to `eval/stats.json` by the corpus generator and shown in the demo report, so a reader can
see how close the synthetic task is to the benchmark it stands in for. RefCOCO's figures are the
published ones (Yu et al. 2016, Mao et al. 2016) and a check of 15 RefCOCOg (umd) refs against
COCO instances (design notes); they are references, not measured here.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

REFCOCO_REFERENCE = {
    "referent_area_median": 0.22,  # RefCOCOg (umd), 15 refs checked against COCO instances
    "referent_area_below_4pct": 0.0,  # none of those 15 under 6.8%
    "expression_words_mean": 3.5,  # RefCOCO (unc); RefCOCOg: 8.4
    "same_category_2_to_4": "most",  # REC images mostly hold 2-4 objects of the referent's category
}


def eval_stats(images: list[dict], anns: list[dict], refs: list[dict],
               splits: tuple[str, ...] = ("val", "testA", "testB")) -> dict[str, Any]:
    """Statistics of the refs in `splits`: referent area (visible box / image), the objects of
    the referent's category in its image, and expression length in words."""
    by_image = {im["id"]: im for im in images}
    by_ann = {a["id"]: a for a in anns}
    per_image_cat = Counter((a["image_id"], a["category_id"]) for a in anns)
    areas, same_cat, words = [], [], []
    for ref in refs:
        if ref["split"] not in splits:
            continue
        ann, im = by_ann[ref["ann_id"]], by_image[ref["image_id"]]
        _, _, w, h = ann["bbox"]
        areas.append(w * h / (im["width"] * im["height"]))
        same_cat.append(per_image_cat[(ref["image_id"], ref["category_id"])])
        words += [len(s["tokens"]) for s in ref["sentences"]]
    if not areas:
        return {"splits": list(splits), "num_refs": 0, "refcoco": REFCOCO_REFERENCE}
    areas_np, same_np = np.asarray(areas), np.asarray(same_cat)
    return {
        "splits": list(splits),
        "num_refs": len(areas),
        "num_expressions": len(words),
        "referent_area_median": round(float(np.median(areas_np)), 4),
        "referent_area_p25": round(float(np.quantile(areas_np, 0.25)), 4),
        "referent_area_below_4pct": round(float(np.mean(areas_np < 0.04)), 4),
        "same_category_2_to_4": round(float(np.mean((same_np >= 2) & (same_np <= 4))), 4),
        "same_category_mean": round(float(same_np.mean()), 3),
        "expression_words_mean": round(float(np.mean(words)), 3),
        "refcoco": REFCOCO_REFERENCE,
    }
