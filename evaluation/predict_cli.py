"""Runs a trained LocCa checkpoint on your own images:

    python evaluation/predict_cli.py --workdir W [--step N] --images 'photos/*.jpg' \
        --task caption|refer|ground [--text "the dog on the left"] [--box y1,x1,y2,x2] \
        [--queries queries.jsonl] [--beam_size K] [--encoder EXPORT] --output OUT

caption: greedy (or beam) `cap`; refer: `aref` + each --text -> a box and the model's
probability of it (the REC evaluator's decoding: evaluators/rec_common.box_generate); ground:
`gcap` + each --box (normalized [y1, x1, y2, x2]) -> a phrase. --queries gives per-image queries
instead, one JSON line each: {"image": PATH, "text": "..."} or {"image": PATH, "box": [...]}.
--encoder swaps in an exported encoder (a `.npz` or a transformers export directory).

Writes OUT/predictions.jsonl (one line per (image, query)), OUT/images/*.png (boxes and text
drawn), OUT/index.html, OUT/skipped.jsonl (files that could not be read, with the reason) and
OUT/summary.json (images = processed + skipped). Any JPEG, PNG or WebP Pillow reads, upright
after EXIF orientation, in any colour mode; images over --max_pixels and undecodable files are
skipped and reported, never the end of the run (pipelines/decode.py, as annotate does).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # `python evaluation/predict_cli.py` from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

TASKS = ("caption", "refer", "ground")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Run a trained LocCa checkpoint on your images.")
    p.add_argument("--workdir", required=True, help="training workdir (config.json, checkpoints/)")
    p.add_argument("--step", type=int, help="checkpoint step (default: the latest complete one)")
    p.add_argument("--images", action="append", default=[], help="file or glob (repeatable)")
    p.add_argument("--task", choices=TASKS, default="caption")
    p.add_argument("--text", action="append", default=[],
                   help="refer: an expression, asked of every image (repeatable)")
    p.add_argument("--box", action="append", default=[],
                   help="ground: y1,x1,y2,x2 in [0, 1], asked of every image (repeatable)")
    p.add_argument("--queries", help="JSON lines of per-image queries (see the docstring)")
    p.add_argument("--beam_size", type=int, default=1, help="1: greedy; k > 1: beam search")
    p.add_argument("--encoder", help="exported encoder to use (.npz or transformers directory)")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--batch_size", type=int, default=16, help="model batch (one compile)")
    p.add_argument("--chunk", type=int, default=64,
                   help="images decoded and held at once (progress is logged per chunk)")
    p.add_argument("--max_pixels", type=int, default=64_000_000,
                   help="skip images over this many pixels (annotate's cap)")
    p.add_argument("--tokenizer", help="tokenizer .model (default: config.json's)")
    return p.parse_args(argv)


@dataclasses.dataclass(frozen=True)
class Query:
    image: str
    text: str = ""
    box: tuple[float, ...] | None = None


def parse_box(value) -> tuple[float, ...]:
    """"y1,x1,y2,x2" or a list -> 4 floats in [0, 1] with y1 <= y2, x1 <= x2; ValueError."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        box = tuple(float(v) for v in parts)
    except (TypeError, ValueError):
        box = ()
    if (len(box) != 4 or not all(0 <= v <= 1 for v in box) or box[0] > box[2]
            or box[1] > box[3]):
        raise ValueError(f"box {value!r} must be y1,x1,y2,x2 in [0, 1] with y1 <= y2, x1 <= x2")
    return box


def expand_images(patterns: list[str]) -> list[str]:
    """Files matching the patterns, sorted, each once; ValueError when none match."""
    found = sorted({p for pat in patterns for p in glob.glob(os.path.expanduser(pat))
                    if os.path.isfile(p)})
    if not found:
        raise ValueError(f"no image files match --images {patterns}: give a file or a glob "
                         "such as 'photos/*.jpg'")
    return found


def build_queries(task: str, images: list[str], texts: list[str], boxes: list[str],
                  queries_file: str | None) -> list[Query]:
    """Per-image queries from the flags (every --text / --box for every image) or the file."""
    if queries_file:
        return [_file_query(task, json.loads(line)) for line in
                Path(queries_file).read_text().splitlines() if line.strip()]
    if task == "caption":
        return [Query(p) for p in images]
    if task == "refer":
        if not texts:
            raise ValueError("--task refer needs --text 'an expression' (or --queries)")
        return [Query(p, text=t) for p in images for t in texts]
    if not boxes:
        raise ValueError("--task ground needs --box y1,x1,y2,x2 (or --queries)")
    parsed = [parse_box(b) for b in boxes]
    return [Query(p, box=b) for p in images for b in parsed]


def _file_query(task: str, line: dict) -> Query:
    if "image" not in line:
        raise ValueError(f"--queries line {line} has no 'image'")
    if task == "refer" and not line.get("text"):
        raise ValueError(f"--queries line {line} has no 'text' for --task refer")
    box = parse_box(line["box"]) if task == "ground" else None
    return Query(str(line["image"]), text=str(line.get("text", "")), box=box)


def load_params(workdir: str, step: int | None, encoder: str | None, tokenizer: str | None):
    """(TrainRun, params, step) of the latest (or given) complete checkpoint; `encoder` replaces
    the checkpoint's encoder with an exported one (strictly, model/vit_weights.py)."""
    from evaluation import watch
    from evaluation.train_run import TrainRun
    from model import vit_weights

    run = TrainRun.load(workdir, tokenizer)
    step = watch.resolve_step(workdir, step)
    params = dict(run.restore_params(watch.step_path(workdir, step)))
    if encoder:
        params["img"] = vit_weights.load_vit_params(encoder, params["img"])
    return run, params, step


@dataclasses.dataclass
class Decoded:
    model: dict  # path -> uint8[S, S, 3], the model's input
    display: dict  # path -> PIL image to draw on
    sizes: dict  # path -> (height, width) of the upright original
    skipped: list  # {"image", "reason", "detail"}


def decode_images(paths: list[str], size: int, max_pixels: int) -> Decoded:
    """Reads and decodes each file as annotate does (pipelines/decode.upright_rgb) and resizes it
    as the evaluators' loader does (evaluation/images.resize_square); bad files are listed."""
    from evaluation.images import resize_square
    from evaluation.predict_render import display_copy
    from pipelines.decode import BadInput, DecodeConfig, upright_rgb

    config = DecodeConfig(max_pixels=max_pixels, min_side=1, store_max_side=0,
                          detect_max_side=0)
    out = Decoded({}, {}, {}, [])
    for path in paths:
        try:
            pixels = upright_rgb(Path(path).read_bytes(), config)
        except BadInput as e:
            out.skipped.append({"image": path, "reason": e.reason, "detail": e.detail})
            continue
        except OSError as e:
            out.skipped.append({"image": path, "reason": "unreadable", "detail": str(e)[:300]})
            continue
        except Exception as e:  # noqa: BLE001 - one odd file must not end a run over thousands
            out.skipped.append({"image": path, "reason": "decode_error",
                                "detail": f"{type(e).__name__}: {e}"[:300]})
            continue
        out.model[path] = resize_square(pixels, size)
        out.display[path] = display_copy(pixels)
        out.sizes[path] = pixels.shape[:2]
    return out


class Runner:
    """Answers queries on decoded images with one Predictor (each shape compiled once)."""

    def __init__(self, run, params, batch_size: int, beam_size: int):
        from evaluation.predict import Predictor

        self.run, self.params, self.beam_size = run, params, beam_size
        tok = run.tokenizer
        self.predictor = Predictor(run.model, batch_size=batch_size, eos_id=tok.eos_id,
                                   pad_id=tok.pad_id)

    def answer(self, task: str, queries: list[Query], images: dict) -> list[dict]:
        """One output row per query (queries on images missing from `images` are dropped)."""
        from evaluation.evaluators import rec_common
        from evaluation.images import to_model_range
        from model import tasks

        queries = [q for q in queries if q.image in images]
        if not queries:
            return []
        tok, p = self.run.tokenizer, self.predictor

        def encode(paths):
            return p.encode(self.params, to_model_range(np.stack([images[x] for x in paths])))

        if task == "refer":
            prompts = rec_common.aref_prompts([q.text for q in queries], tok, p.max_len)
            generate = rec_common.box_generate(p, self.params, tok, rec_common.box_decoding(tok),
                                               beam_size=self.beam_size, scored=True)
        else:
            prompts = [tasks.make_prompt("cap", tok) if task == "caption"
                       else tasks.make_prompt("gcap", tok, box=q.box) for q in queries]

            def generate(encoded, chunk):
                return p.generate_scored(self.params, encoded, chunk, beam_size=self.beam_size)

        answers = rec_common.prompted_rows([q.image for q in queries], prompts, encode,
                                           [generate], p.batch_size)[0]
        return [self._row(task, q, ids, score) for q, (ids, score) in
                zip(queries, answers, strict=True)]

    def _row(self, task: str, q: Query, ids: list[int], logprob: float) -> dict:
        from model import tasks

        tok = self.run.tokenizer
        if task == "caption":
            return {"image": q.image, "task": task, "text": tok.decode(ids), "logprob": logprob}
        if task == "refer":
            box = tasks.decode_target("aref", ids, tok).box
            return {"image": q.image, "task": task, "query": q.text,
                    "box": None if box is None else [float(v) for v in box],
                    "score": math.exp(logprob), "logprob": logprob}
        return {"image": q.image, "task": task, "query": list(q.box),
                "text": tasks.decode_target("gcap", ids, tok).text, "logprob": logprob}


def pixel_box(box, size) -> list[float] | None:
    """Normalized [y1, x1, y2, x2] -> [x1, y1, x2, y2] in pixels of the upright original."""
    if box is None:
        return None
    h, w = size
    return [box[1] * w, box[0] * h, box[3] * w, box[2] * h]


def predict(workdir: str, output: str, task: str, queries: list[Query], *, step=None,
            encoder=None, tokenizer=None, batch_size=16, beam_size=1, chunk=64,
            max_pixels=64_000_000, log=print) -> dict:
    """Runs the whole command (see the module docstring) and returns the summary."""
    from evaluation.predict_render import page

    run, params, step = load_params(workdir, step, encoder, tokenizer)
    runner = Runner(run, params, batch_size, beam_size)
    out = Path(output)
    (out / "images").mkdir(parents=True, exist_ok=True)
    paths = sorted({q.image for q in queries})
    index = {p: i for i, p in enumerate(paths)}
    items, skipped, n_rows, t0 = [], [], 0, time.time()
    with open(out / "predictions.jsonl", "w") as pred_f:
        for c in range(0, len(paths), chunk):
            part = set(paths[c : c + chunk])
            dec = decode_images(sorted(part), int(run.model_config.image_size), max_pixels)
            for s in dec.skipped:
                log(f"skipped {s['image']}: {s['reason']} ({s['detail']})")
            rows = runner.answer(task, [q for q in queries if q.image in part], dec.model)
            for row in rows:
                row["step"] = step
                if row.get("box") is not None:
                    row["box_pixels"] = pixel_box(row["box"], dec.sizes[row["image"]])
                pred_f.write(json.dumps(row) + "\n")
            items += _draw_all(out, dec, rows, index)
            skipped += dec.skipped
            n_rows += len(rows)
            done = min(c + chunk, len(paths))
            log(f"[predict] {done}/{len(paths)} images, {len(skipped)} skipped, "
                f"{done / max(time.time() - t0, 1e-9):.1f} images/s")
    summary = {"images": len(paths), "processed": len(items), "skipped": len(skipped),
               "skipped_by_reason": dict(Counter(s["reason"] for s in skipped)),
               "rows": n_rows, "task": task, "step": step, "workdir": str(workdir)}
    with open(out / "skipped.jsonl", "w") as f:
        f.writelines(json.dumps(s) + "\n" for s in skipped)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    title = f"LocCa predict: {task}, {Path(workdir).name} step {step}"
    (out / "index.html").write_text(page(title, items, skipped, summary))
    return summary


def _draw_all(out: Path, dec: Decoded, rows: list[dict], index: dict[str, int]) -> list[dict]:
    """Draws each decoded image with its rows into OUT/images/; the page's items, in order."""
    from evaluation.predict_render import draw

    by_image: dict[str, list[dict]] = {}
    for row in rows:
        by_image.setdefault(row["image"], []).append(row)
    items = []
    for path in sorted(dec.model, key=index.get):
        png = f"images/{index[path]:05d}_{Path(path).stem}.png"
        draw(dec.display[path], by_image.get(path, [])).save(out / png)
        items.append({"image": path, "png": png, "rows": by_image.get(path, [])})
    return items


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.images and not args.queries:
        raise SystemExit("error: no images: pass --images 'photos/*.jpg' (or --queries FILE)")
    if args.beam_size < 1 or args.batch_size < 1 or args.chunk < 1:
        raise SystemExit("error: --beam_size, --batch_size and --chunk must be >= 1")
    try:
        images = [] if args.queries else expand_images(args.images)
        queries = build_queries(args.task, images, args.text, args.box, args.queries)
        summary = predict(os.path.abspath(args.workdir), args.output, args.task, queries,
                          step=args.step, encoder=args.encoder, tokenizer=args.tokenizer,
                          batch_size=args.batch_size, beam_size=args.beam_size,
                          chunk=args.chunk, max_pixels=args.max_pixels)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"[predict] {summary['processed']} images processed, {summary['skipped']} skipped, "
          f"{summary['rows']} rows: {Path(args.output) / 'index.html'}", flush=True)


if __name__ == "__main__":
    main()
