"""Writes runs/demo/report.html and report.json from the demo's files (no model code needed).

    python infra/demo_report.py --run_dir runs/demo [--profile demo|reproduce]

Reads only what the stages wrote: the annotate manifest and preview, both training workdirs'
metrics.jsonl, their eval/results.jsonl and REC predictions, and the stage commands. Everything taken
from data (alt-texts, expressions) is HTML-escaped.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import html
import io
import json
import sys
from pathlib import Path

import demo  # infra/demo.py: this script runs from infra/ (`python infra/demo_report.py`)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evaluation.bootstrap import image_bootstrap  # noqa: E402 - numpy only
from evaluation.metrics import is_hit  # noqa: E402 - numpy only

MODELS = {"locca": "LocCa (tiny)", "cap": "Captioner baseline (cap_tiny)"}
HELD_OUT = ("val", "testA", "testB")
# The stages whose time counts: every stage of infra/demo.py but the report itself.
TIMED_STAGES = tuple(s.name for s in demo.stages() if s.name != "report")


def target_text(profile: demo.Profile) -> dict[str, str]:
    """The profile's targets (the localisation issue's), as the report states them."""
    prior = (f" and >= {profile.rec_prior_ratio:g}x the constant-box prior's"
             if profile.rec_prior_ratio else "")
    return {
        "rec_locca": f"LocCa REC Acc@0.5 (aref prompt, argmax decoding) >= {profile.rec_min:g} "
                     f"on each of {'/'.join(HELD_OUT)}{prior}",
        "transfer_gap": f"frozen-encoder REC transfer: LocCa beats the captioner by >= "
                        f"{profile.gap_min_points:g} points (held-out splits pooled), 95% "
                        "interval above 0",
        "cider_kept": "captioning CIDEr of LocCa within 5 points of the captioner's (which must "
                      "be > 0.05)",
        "seed_check": "on an eval set drawn with another seed, LocCa's REC and the transfer gap "
                      "stay within these 95% intervals",
        "demo_time": f"the whole {profile.name} (every stage, after installation) within "
                     f"{profile.budget_s / 60:g} minutes",
    }


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def final_metrics(workdir: Path) -> dict[str, float]:
    """{evaluator/split/metric: value} at the latest evaluated step."""
    rows = _read_jsonl(workdir / "eval" / "results.jsonl")
    if not rows:
        return {}
    last = max(r["step"] for r in rows)
    return {
        f"{r['evaluator']}/{r['split']}/{r['metric']}": float(r["value"])
        for r in rows
        if r["step"] == last
    } | {"step": last}


def _mean(metrics: dict[str, float], evaluator: str, metric: str) -> float | None:
    vals = [
        v
        for k, v in metrics.items()
        if k.startswith(f"{evaluator}/") and k.endswith(f"/{metric}") and "/train/" not in k
    ]
    return sum(vals) / len(vals) if vals else None


def _hit(row: dict) -> float:
    iou = row.get("iou")
    return float(iou is not None and bool(is_hit(iou)))  # as rec_scores counts


def paired_gap(run_dir: Path, name: str = "rec_transfer",
               steps: dict[str, int] | None = None) -> dict | None:
    """LocCa's REC hits minus the captioner's on the same expressions (from each model's
    eval/predictions/{name}_{split}_step{N}.jsonl), in points: pooled over the held-out splits
    and per split, each with its 95% image-bootstrap interval. None without both models' files."""
    steps = steps or {m: final_metrics(run_dir / m).get("step") for m in MODELS}
    if any(steps.get(m) is None for m in MODELS):
        return None
    pooled, groups, per_split = [], [], {}
    for split in HELD_OUT:
        rows = {m: _read_jsonl(run_dir / m / "eval" / "predictions" /
                               f"{name}_{split}_step{int(steps[m])}.jsonl") for m in MODELS}
        a, b = rows["locca"], rows["cap"]
        if not a or [(r["ref_id"], r["sentence"]) for r in a] != [
                (r["ref_id"], r["sentence"]) for r in b]:
            continue  # missing, or not the same expressions: no paired difference
        diff = [_hit(x) - _hit(y) for x, y in zip(a, b, strict=True)]
        ids = [f"{split}/{r['image_id']}" for r in a]  # unique over the pooled splits
        lo, hi = image_bootstrap(diff, ids)
        per_split[split] = {"value": 100 * sum(diff) / len(diff), "lo": 100 * lo, "hi": 100 * hi}
        pooled += diff
        groups += ids
    if not pooled:
        return None
    lo, hi = image_bootstrap(pooled, groups)
    return {"value": 100 * sum(pooled) / len(pooled), "lo": 100 * lo, "hi": 100 * hi,
            "count": len(pooled), "per_split": per_split}


def rec_per_split(metrics: dict[str, float], evaluator: str = "rec") -> dict[str, dict]:
    """{split: {acc, lo, hi, prior, expected}} of the held-out splits present."""
    out = {}
    for split in HELD_OUT:
        key = f"{evaluator}/{split}/acc@0.5"
        if key in metrics:
            out[split] = {k: metrics.get(f"{key}{suffix}") for k, suffix in (
                ("acc", ""), ("lo", "_lo"), ("hi", "_hi"), ("prior", "_prior"),
                ("expected", "_expected"))}
    return out


def _within(value: float | None, lo: float | None, hi: float | None) -> bool:
    return None not in (value, lo, hi) and lo <= value <= hi


def check_targets(results: dict[str, dict[str, float]],
                  markers: dict[str, dict] | None = None,
                  profile: demo.Profile = demo.PROFILES["demo"],
                  gaps: dict[str, dict | None] | None = None) -> dict[str, dict]:
    """The profile's targets. markers: {stage: its stages/<stage>.json}; gaps: paired_gap of the
    main eval set ("main") and of the other seed's ("seed1")."""
    locca, cap = results.get("locca", {}), results.get("cap", {})
    gaps = gaps or {}
    out = {}
    rec = rec_per_split(locca)
    ok = len(rec) == len(HELD_OUT) and all(
        r["acc"] >= profile.rec_min
        and (not profile.rec_prior_ratio
             or (r["prior"] is not None and r["acc"] >= profile.rec_prior_ratio * r["prior"]))
        for r in rec.values())
    # The target is the paper's (argmax) decoding; the expected-bin figure is shown beside it.
    out["rec_locca"] = {"value": min((r["acc"] for r in rec.values()), default=None),
                        "per_split": rec, "expected": _mean(locca, "rec", "acc@0.5_expected"),
                        "passed": ok}
    gap = gaps.get("main")
    out["transfer_gap"] = {
        "value": None if gap is None else gap["value"],
        "lo": None if gap is None else gap["lo"], "hi": None if gap is None else gap["hi"],
        "locca": _mean(locca, "rec_transfer", "acc@0.5"),
        "cap": _mean(cap, "rec_transfer", "acc@0.5"),
        "passed": gap is not None and gap["value"] >= profile.gap_min_points and gap["lo"] > 0,
    }
    c_l, c_c = _mean(locca, "captioning", "cider"), _mean(cap, "captioning", "cider")
    diff = None if c_l is None or c_c is None else 100 * (c_l - c_c)
    out["cider_kept"] = {
        "value": diff,
        "locca": c_l,
        "cap": c_c,
        # Both captioners at ~0 CIDEr "agree" but show nothing: that is not the paper's claim.
        "passed": diff is not None and diff >= -5 and c_c is not None and c_c > 0.05,
    }
    # Minutes, from each stage's own marker: a rerun that reused stages still reports the time a
    # full run takes. Every stage before the report must have run, at the default sizes.
    markers = markers or {}
    timed = [m for m in (markers.get(n) for n in TIMED_STAGES) if m and m.get("seconds") is not None]
    complete = len(timed) == len(TIMED_STAGES)
    default = complete and all(m.get("default_sizes", False) for m in timed)
    minutes = sum(float(m["seconds"]) for m in timed) / 60 if timed else None
    out["demo_time"] = {"value": minutes, "complete": complete, "default_sizes": default,
                        "passed": default and minutes * 60 <= profile.budget_s}
    other, gap1 = rec_per_split(locca, "rec_seed1"), gaps.get("seed1")
    inside = {s: _within(other[s]["acc"], rec[s]["lo"], rec[s]["hi"])
              for s in HELD_OUT if s in other and s in rec}
    gap_inside = gap is not None and gap1 is not None and _within(gap1["value"], gap["lo"],
                                                                   gap["hi"])
    out["seed_check"] = {"value": None if gap1 is None else gap1["value"], "rec": other,
                         "rec_inside": inside, "gap_inside": gap_inside,
                         "passed": len(inside) == len(HELD_OUT) and all(inside.values())
                         and gap_inside}
    for key, text in target_text(profile).items():
        out[key]["target"] = text
    out = {k: out[k] for k in target_text(profile)}  # in the order the report states them
    return out


# (metric key, label) of the image-reliance rows (evaluation/evaluators/image_reliance.py).
RELIANCE_ROWS = (
    ("image_reliance/cap/reliance", "Cap: caption tokens"),
    ("image_reliance/aref/reliance", "ARef: expression + box tokens"),
    ("image_reliance/aref/loc_reliance", "ARef: the 4 box tokens alone"),
    ("image_reliance/gcap/reliance", "GCap: box + phrase tokens"),
)


def _model_rows(rows) -> str:
    """HTML rows from (label, {model: value or None}); a row no model has a value for is left out."""
    out = []
    for label, values in rows:
        if any(values.get(n) is not None for n in MODELS):
            cells = "".join(f"<td>{_fmt(values.get(n))}</td>" for n in MODELS)
            out.append(f"<tr><td>{html.escape(label)}</td>{cells}</tr>")
    return "".join(out)


def reliance_table(results: dict[str, dict[str, float]]) -> str:
    """HTML rows: how much each model's held-out loss rises when it is given another image."""
    return _model_rows((label, {n: results[n].get(key) for n in MODELS})
                       for key, label in RELIANCE_ROWS)


# (metric, label) of the location-readout rows (evaluation/evaluators/loc_readout.py), each the
# mean over the held-out splits.
READOUT_ROWS = (
    ("r2_y1", "R^2 of y1 (top edge)"),
    ("r2_x1", "R^2 of x1 (left edge), given y1"),
    ("r2_y2", "R^2 of y2 (bottom edge), given y1, x1"),
    ("r2_x2", "R^2 of x2 (right edge), given y1, x1, y2"),
    ("mae_bins", "mean |error| in location bins"),
    ("tf_acc@0.5", "Acc@0.5 of the 4 teacher-forced edges"),
)


def readout_table(results: dict[str, dict[str, float]]) -> str:
    """HTML rows: how well each model reads each box edge, given the true earlier ones."""
    return _model_rows((label, {n: _mean(results[n], "loc_readout", metric) for n in MODELS})
                       for metric, label in READOUT_ROWS)


def _png_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def training_curves(run_dir: Path) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    drew = False
    for name, label in MODELS.items():
        rows = _read_jsonl(run_dir / name / "metrics.jsonl")
        for ax, task in zip(axes, ("cap", "aref", "gcap"), strict=True):
            pts = [(r["step"], r[f"{task}/loss"]) for r in rows if f"{task}/loss" in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=label)
                ax.set_title(f"{task} loss")
                ax.set_xlabel("step")
                drew = True
    if not drew:
        plt.close(fig)
        return None
    axes[0].legend()
    uri = _png_data_uri(fig)
    plt.close(fig)
    return uri


def rec_gallery(run_dir: Path, max_items: int = 12) -> str | None:
    """Predicted (red) and true (green) boxes drawn on held-out images."""
    preds_dir = run_dir / "locca" / "eval" / "predictions"
    # The argmax-decoded files only (rec_{split}_step{N}.jsonl, not _expected or _beam{k}).
    files = sorted(p for p in preds_dir.glob("rec_*_step*.jsonl")
                   if p.stem.count("_") == 2) if preds_dir.exists() else []
    if not files:
        return None
    from PIL import Image, ImageDraw

    latest = max(files, key=lambda p: int(p.stem.rsplit("step", 1)[-1] or 0))
    cells = []
    for row in _read_jsonl(latest)[:max_items]:
        path = run_dir / "corpus" / "eval" / "images" / row["file_name"]
        if not path.exists():
            continue
        img = Image.open(path).convert("RGB")
        draw = ImageDraw.Draw(img)
        w, h = img.size
        for box, colour in ((row.get("gt_box"), (0, 200, 0)), (row.get("pred_box"), (230, 0, 0))):
            if box:
                y0, x0, y1, x1 = box
                draw.rectangle([x0 * w, y0 * h, x1 * w, y1 * h], outline=colour, width=3)
        buf = io.BytesIO()
        img.thumbnail((256, 256))
        img.save(buf, "PNG")
        iou = row.get("iou")
        cells.append(
            f'<figure><img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'
            f"<figcaption>{html.escape(row.get('sentence', ''))}<br>IoU "
            f"{'malformed' if iou is None else f'{iou:.2f}'}</figcaption></figure>"
        )
    return f"<p>From {html.escape(latest.name)}; green = truth, red = prediction.</p>" + "".join(
        cells
    )


def use_section(run_dir: Path, max_items: int = 8) -> str:
    """Links to the exported encoder's model cards and the predict page, with its drawn images."""
    links = []
    for rel in ("export/transformers/README.md", "export/big_vision/README.md",
                "predict/index.html"):
        found = (run_dir / rel).exists()
        links.append(f'<a href="{rel}">{rel}</a>' if found else f"{rel} (missing)")
    texts: dict[str, list[str]] = {}  # image stem -> its predicted texts
    for row in _read_jsonl(run_dir / "predict" / "predictions.jsonl"):
        texts.setdefault(Path(row["image"]).stem, []).append(row.get("text") or "")
    cells = [  # predict's PNGs are named <index>_<image stem>.png
        f'<figure><img src="predict/images/{html.escape(p.name)}" width="256"><figcaption>'
        f'{html.escape(" / ".join(texts.get(p.stem.split("_", 1)[-1], [])))}</figcaption></figure>'
        for p in sorted((run_dir / "predict" / "images").glob("*.png"))[:max_items]
    ]
    return ("<p>Model cards and the predict page: " + " | ".join(links) + "</p>"
            + ("".join(cells) or "<p>no predict images found</p>"))


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else html.escape(str(v)))


def _interval(v, lo, hi, digits: int = 3) -> str:
    if v is None:
        return "-"
    ci = "" if lo is None or hi is None else f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return f"{v:.{digits}f}{ci}"


def target_detail(key: str, t: dict) -> str:
    """The value cell of a target row: per-split figures with their 95% intervals."""
    if key == "rec_locca" and t.get("per_split"):
        parts = [f"{s} {_interval(r['acc'], r['lo'], r['hi'])} (prior {_fmt(r['prior'])})"
                 for s, r in t["per_split"].items()]
        extra = f"; expected-bin decoding, mean {_fmt(t['expected'])}" if t.get("expected") else ""
        return html.escape("; ".join(parts) + extra)
    if key == "transfer_gap" and t.get("value") is not None:
        return html.escape(f"{_interval(t['value'], t['lo'], t['hi'], 1)} points (LocCa "
                           f"{_fmt(t['locca'])} vs captioner {_fmt(t['cap'])})")
    if key == "seed_check" and t.get("rec"):
        parts = [f"{s} {_fmt(r['acc'])} {'in' if t['rec_inside'].get(s) else 'OUTSIDE'}"
                 for s, r in t["rec"].items()]
        gap = (f"gap {_fmt(t['value'])} points "
               f"{'in' if t['gap_inside'] else 'OUTSIDE'}") if t.get("value") is not None else ""
        return html.escape("REC " + ", ".join(parts) + ("; " + gap if gap else ""))
    if key == "cider_kept" and t.get("value") is not None:
        return html.escape(f"{t['value']:+.1f} points (LocCa {_fmt(t['locca'])} vs captioner "
                           f"{_fmt(t['cap'])})")
    if key == "demo_time" and t.get("value") is not None:
        why = ("" if t.get("default_sizes") else " (not every stage has run)"
               if not t.get("complete") else " (not at the profile's own sizes)")
        return f"{t['value']:.1f} min{why}"
    return _fmt(t.get("value"))


def stats_table(run_dir: Path) -> str | None:
    """HTML table: the eval set's REC statistics beside RefCOCO's (corpus/eval/stats.json)."""
    path = run_dir / "corpus" / "eval" / "stats.json"
    if not path.exists():
        return None
    st = json.loads(path.read_text())
    ref = st.get("refcoco", {})
    rows = (("referent area, median (share of the image)", "referent_area_median"),
            ("referents under 4% of the image", "referent_area_below_4pct"),
            ("refs whose image holds 2-4 objects of their category", "same_category_2_to_4"),
            ("words per expression, mean", "expression_words_mean"))
    body = "".join(f"<tr><td>{html.escape(label)}</td><td>{_fmt(st.get(k))}</td>"
                   f"<td>{_fmt(ref.get(k))}</td></tr>" for label, k in rows)
    return (f"<table><tr><th>statistic ({st.get('num_refs', 0)} refs)</th><th>this eval set</th>"
            f"<th>RefCOCO</th></tr>{body}</table>")


def rec_table(results: dict[str, dict[str, float]], gaps: dict[str, dict | None]) -> str:
    """HTML rows per held-out split: REC and transfer Acc@0.5 of both models with intervals,
    and the paired transfer gap."""
    rows = []
    for split in HELD_OUT:
        cells = []
        for evaluator in ("rec", "rec_transfer"):
            for m in MODELS:
                r = rec_per_split(results[m], evaluator).get(split)
                cells.append(_interval(r["acc"], r["lo"], r["hi"]) if r else "-")
        g = (gaps.get("main") or {}).get("per_split", {}).get(split)
        cells.append(_interval(g["value"], g["lo"], g["hi"], 1) if g else "-")
        cells += [_fmt(results["locca"].get(f"rec/{split}/{k}"))
                  for k in ("wrong_object", "same_answer")]
        picked, blind, chance = (results["locca"].get(f"rec/{split}/choice{k}")
                                 for k in ("", "_blind", "_chance"))
        cells.append("-" if picked is None else
                     f"{_fmt(picked)} / {_fmt(blind)} ({_fmt(chance)})")
        rows.append(f"<tr><td>{split}</td>" + "".join(f"<td>{html.escape(c)}</td>"
                                                       for c in cells) + "</tr>")
    return "".join(rows)


def learning_curve(run_dir: Path) -> str | None:
    """PNG data URI: REC Acc@0.5 and the transfer gap against steps, LocCa vs the captioner
    (when more than one checkpoint was scored, as `make reproduce` does)."""
    rows = {m: _read_jsonl(run_dir / m / "eval" / "results.jsonl") for m in MODELS}

    def curve(m, evaluator):
        by_step: dict[int, list[float]] = {}
        for r in rows[m]:
            if (r["evaluator"], r["metric"]) == (evaluator, "acc@0.5") and r["split"] in HELD_OUT:
                by_step.setdefault(r["step"], []).append(r["value"])
        return sorted((k, sum(v) / len(v)) for k, v in by_step.items())

    if len(curve("locca", "rec")) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for m, label in MODELS.items():
        for ax, evaluator in zip(axes, ("rec", "rec_transfer"), strict=True):
            pts = curve(m, evaluator)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    steps = sorted({s for s, _ in curve("locca", "rec_transfer")}
                   & {s for s, _ in curve("cap", "rec_transfer")})
    gaps = [(s, paired_gap(run_dir, steps={"locca": s, "cap": s})) for s in steps]
    gaps = [(s, g) for s, g in gaps if g]
    if gaps:
        twin = axes[1].twinx()
        xs = [s for s, _ in gaps]
        twin.errorbar(xs, [g["value"] for _, g in gaps],
                      yerr=[[g["value"] - g["lo"] for _, g in gaps],
                            [g["hi"] - g["value"] for _, g in gaps]],
                      color="k", ls="--", capsize=3, label="gap (points, 95% CI)")
        twin.set_ylabel("LocCa - captioner (points)")
        twin.legend(loc="lower right")
    axes[0].set_title("REC Acc@0.5 (own decoder), held-out mean")
    axes[1].set_title("frozen-encoder transfer Acc@0.5")
    for ax in axes:
        ax.set_xlabel("training step")
    axes[0].legend()
    uri = _png_data_uri(fig)
    plt.close(fig)
    return uri


def build(run_dir: Path, profile: demo.Profile = demo.PROFILES["demo"]) -> dict:
    results = {name: final_metrics(run_dir / name) for name in MODELS}
    commands = {}
    for marker in sorted((run_dir / "stages").glob("*.json")):
        if marker.name.endswith(".partial.json"):  # a stage still unfinished (infra/demo.py)
            continue
        commands[marker.stem] = json.loads(marker.read_text())
    gaps = {"main": paired_gap(run_dir), "seed1": paired_gap(run_dir, "rec_transfer_seed1")}
    targets = check_targets(results, commands, profile, gaps)
    stats_path = run_dir / "corpus" / "eval" / "stats.json"
    manifest_path = run_dir / "shards" / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    report = {
        "profile": dataclasses.asdict(profile),
        "metrics": results,
        "targets": targets,
        "transfer_gap": gaps,
        "eval_stats": json.loads(stats_path.read_text()) if stats_path.exists() else {},
        "annotate_counts": manifest.get("counts", {}),
        "stages": commands,
        # From the stage markers: runs/demo/timings.json is written after this report, so it
        # would show the previous run's.
        "timings": {name: m.get("seconds") for name, m in commands.items()},
    }
    (run_dir / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True))

    keys = sorted({k for m in results.values() for k in m if k != "step"})
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td>"
        + "".join(f"<td>{_fmt(results[n].get(k))}</td>" for n in MODELS)
        + "</tr>"
        for k in keys
    )
    target_rows = "".join(
        f"<tr class={'pass' if t['passed'] else 'fail'}><td>{html.escape(t['target'])}</td>"
        f"<td>{target_detail(k, t)}</td><td>{'met' if t['passed'] else 'NOT met'}</td></tr>"
        for k, t in targets.items()
    )
    stats = stats_table(run_dir)
    model_heads = "".join(f"<th>{v}</th>" for v in MODELS.values())
    rec_rows = rec_table(results, gaps)
    curve = learning_curve(run_dir)
    curves = training_curves(run_dir)
    gallery = rec_gallery(run_dir)
    reliance = reliance_table(results)
    readout = readout_table(results)
    preview = run_dir / "shards" / "preview.html"
    cmd_rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td><code>{html.escape(v['command'])}</code></td>"
        f"<td>{_fmt(v.get('seconds'))}</td></tr>"
        for k, v in commands.items()
    )
    page = f"""<!doctype html><meta charset="utf-8"><title>LocCa demo report</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:auto}} td,th{{padding:2px 8px}}
tr.pass td{{background:#e6ffe6}} tr.fail td{{background:#ffe6e6}} figure{{display:inline-block;
width:260px;vertical-align:top}} figcaption{{font-size:12px}}</style>
<h1>LocCa {html.escape(profile.name)} report</h1>
<p>Profile <b>{html.escape(profile.name)}</b>: sample corpus preset <b>{html.escape(profile.preset)}
</b>, {profile.num_train:,} training images, {profile.num_eval:,} eval images,
{profile.num_loc} location bins. Intervals are 95% bootstrap intervals over images.</p>
<h2>Targets</h2><table><tr><th>target</th><th>value</th><th></th></tr>{target_rows}</table>
<h2>REC per held-out split</h2>
<p>Acc@0.5 [95% interval]. "Own decoder": the model answers the <code>aref</code> prompt.
"Transfer": the frozen encoder with a fresh decoder trained on the eval set's train split (the
paper's protocol). The gap is LocCa minus the captioner on the same expressions, in points.
"Wrong object": the share of LocCa's answers that miss the referent but land (IoU &ge; 0.5) on
another object of the image, i.e. it found an object but not the one the expression names.
"Same answer": of the pairs of expressions on one image that name different objects, the share
LocCa answers with one box (IoU &ge; 0.5): near 0 when it reads the expression, near 1 when it
answers each image with one box whatever is asked. "Choice": the share of expressions whose
referent's box LocCa finds more likely than every other object's box of the image (teacher-forced;
chance in brackets): grounding without the precision of the generated box; then the same with each
expression shown another image: a choice no better than that comes from the words alone ("left"
picks a left box), not from reading the image.</p>
<table><tr><th>split</th>{model_heads.replace("</th>", " (own decoder)</th>")}
{model_heads.replace("</th>", " (transfer)</th>")}<th>transfer gap</th>
<th>LocCa: wrong object</th><th>LocCa: same answer</th>
<th>LocCa: choice / with another image (chance)</th></tr>{rec_rows}</table>
{f'<h2>Learning curve</h2><img src="{curve}">' if curve else ""}
<h2>The eval set beside RefCOCO</h2>{stats or "<p>no corpus/eval/stats.json</p>"}
<h2>Does the decoder read the image?</h2>
<p>Held-out loss (nats/token) with another example's image minus the loss with the right one: ~0
means the model writes the same tokens whatever it is shown (the text prior and the mean box).</p>
{f'<table><tr><th>tokens</th>{"".join(f"<th>{v}</th>" for v in MODELS.values())}</tr>{reliance}</table>'
 if reliance else "<p>no image_reliance results</p>"}
<h2>How well does the decoder read each box edge?</h2>
<p>Teacher-forced on the held-out <code>aref</code> rows: each location token given the expression
and the true earlier edges, read as the expected bin of the model's distribution over all its
location bins (mean over the held-out splits). R^2 0 = no better than each edge's mean box; 1 = exact.
The Acc@0.5 row reads y2 and x2 as constrained decoding does (at or past the true y1, x1).</p>
{f'<table><tr><th>edge</th>{"".join(f"<th>{v}</th>" for v in MODELS.values())}</tr>{readout}</table>'
 if readout else "<p>no loc_readout results</p>"}
<h2>Metrics at the last evaluated step</h2>
<table><tr><th>metric</th>{"".join(f"<th>{v}</th>" for v in MODELS.values())}</tr>{rows}</table>
<h2>Training curves</h2>{f'<img src="{curves}">' if curves else "<p>no metrics.jsonl found</p>"}
<h2>REC predictions (LocCa, held-out images)</h2>{gallery or "<p>no REC predictions found</p>"}
<h2>Annotate stage</h2><p>counts: <code>{html.escape(json.dumps(manifest.get("counts", {})))}</code>;
preview: <a href="shards/preview.html">{"shards/preview.html" if preview.exists() else "missing"}</a></p>
<h2>Use what you trained: exported encoder and predict</h2>{use_section(run_dir)}
<h2>Commands to reproduce each step</h2><table><tr><th>stage</th><th>command</th><th>s</th></tr>
{cmd_rows}</table>"""
    (run_dir / "report.html").write_text(page)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run_dir", default="runs/demo")
    parser.add_argument("--profile", default="demo", choices=sorted(demo.PROFILES),
                        help="whose targets to check (infra/demo.py PROFILES)")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise SystemExit(f"error: --run_dir {run_dir} does not exist; run `make demo` first")
    report = build(run_dir, demo.PROFILES[args.profile])
    for key, t in report["targets"].items():
        detail = html.unescape(target_detail(key, t))
        print(f"{'MET    ' if t['passed'] else 'NOT MET'} {t['target']}: {detail}")
    print(f"wrote {run_dir / 'report.html'} and {run_dir / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
