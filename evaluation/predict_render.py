"""What the predict command shows: each image with its boxes and text drawn on it (PNG), and one
HTML page of them all. All text on the page is escaped; image links are URL-quoted.

A row is one predict output line (evaluation/predict_cli.py): task "caption" (text), "refer"
(query, box, score) or "ground" (query box, text). Boxes are normalized [y1, x1, y2, x2].
"""

from __future__ import annotations

import html
import urllib.parse
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60))
DISPLAY_SIDE = 640  # longest side of the drawn copy
MIN_SIDE = 256  # smaller images are enlarged to this for drawing


def _font(size: int = 14) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # a Pillow built without FreeType has one bitmap size
        return ImageFont.load_default()


def display_copy(pixels: np.ndarray, max_side: int = DISPLAY_SIDE) -> Image.Image:
    """uint8[h, w, 3] -> an RGB image whose longest side is at most max_side."""
    img = Image.fromarray(pixels, "RGB")
    scale = max_side / max(img.size)
    if scale < 1:
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        return img.resize(size, Image.Resampling.BILINEAR)
    if max(img.size) < MIN_SIDE:  # a thumbnail-sized input is shown enlarged, pixels kept sharp
        scale = MIN_SIDE / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        return img.resize(size, Image.Resampling.NEAREST)
    return img


def row_label(row: dict) -> str:
    """One line of text for a row (the HTML page and the drawing share it)."""
    if row["task"] == "caption":
        return f"{row['text']}  (log p {row['logprob']:.2f})"
    if row["task"] == "refer":
        where = "no box" if row["box"] is None else _fmt_box(row["box"])
        return f"{row['query']} -> {where}  (p {row['score']:.2g})"
    return f"{_fmt_box(row['query'])} -> {row['text']}  (log p {row['logprob']:.2f})"


def _fmt_box(box: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in box) + "]"


def _box_of(row: dict) -> Sequence[float] | None:
    return row["box"] if row["task"] == "refer" else row["query"] if row["task"] == "ground" else None


def draw(img: Image.Image, rows: Sequence[dict]) -> Image.Image:
    """The image with every row's box (outlined, labelled) and caption (a banner) drawn on it."""
    captions = [row_label(r) for r in rows if r["task"] == "caption"]
    font = _font()
    line_h = 18
    canvas = Image.new("RGB", (img.width, img.height + line_h * len(captions)), (255, 255, 255))
    canvas.paste(img, (0, 0))
    pen = ImageDraw.Draw(canvas)
    for i, text in enumerate(captions):
        pen.text((4, img.height + i * line_h + 2), text, fill=(0, 0, 0), font=font)
    boxed = [r for r in rows if _box_of(r) is not None]
    for i, row in enumerate(boxed):
        colour = COLOURS[i % len(COLOURS)]
        y1, x1, y2, x2 = _box_of(row)
        xy = (x1 * img.width, y1 * img.height, x2 * img.width, y2 * img.height)
        pen.rectangle(xy, outline=colour, width=3)
        label = row["query"] if row["task"] == "refer" else row["text"]
        # Inside the box's top-left corner, moved up and left when that would leave the image.
        width = pen.textlength(label, font=font)
        at = (min(xy[0] + 3, max(0, img.width - width - 3)), min(xy[1] + 2, img.height - line_h))
        left, top, right, bottom = pen.textbbox(at, label, font=font)
        pen.rectangle((left - 2, top - 1, right + 2, bottom + 1), fill=colour)
        pen.text(at, label, fill=(255, 255, 255), font=font)
    return canvas


_STYLE = """body{font-family:sans-serif;margin:16px;background:#fafafa}
.grid{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0;background:#fff;border:1px solid #ddd;padding:8px;max-width:420px}
figure img{max-width:400px;display:block}figcaption{font-size:13px;word-break:break-word}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}"""


def _figure(item: dict) -> str:
    src = urllib.parse.quote(item["png"])
    lines = "".join(f"<li>{html.escape(row_label(r))}</li>" for r in item["rows"])
    name = html.escape(item["image"])
    return (f'<figure><img src="{src}" alt="{name}" loading="lazy">'
            f"<figcaption><b>{name}</b><ul>{lines}</ul></figcaption></figure>")


def page(title: str, items: Sequence[dict], skipped: Sequence[dict], summary: dict) -> str:
    """The HTML page: a summary line, one figure per image, a table of skipped files."""
    counts = ", ".join(f"{html.escape(str(k))}: {html.escape(str(v))}"
                       for k, v in summary.items() if not isinstance(v, dict))
    bad = "".join(f"<tr><td>{html.escape(s['image'])}</td><td>{html.escape(s['reason'])}</td>"
                  f"<td>{html.escape(s.get('detail', ''))}</td></tr>" for s in skipped)
    table = (f"<h2>Skipped ({len(skipped)})</h2><table><tr><th>file</th><th>reason</th>"
             f"<th>detail</th></tr>{bad}</table>") if skipped else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{counts}</p><div class='grid'>{''.join(_figure(i) for i in items)}</div>"
            f"{table}</body></html>\n")
