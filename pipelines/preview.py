"""A human check of the annotations: preview.html (self-contained) and a PNG contact sheet.

Alt-texts and phrases are untrusted web content: every string that reaches the HTML goes through
`html.escape` (quotes included), and images are inlined as base64 JPEG produced here, never as links.
"""

from __future__ import annotations

import base64
import html
import io

from PIL import Image, ImageDraw

from pipelines import record as record_lib

_COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"]
THUMB = 320


def draw(rec: record_lib.Record, size: int = THUMB) -> Image.Image:
    """The record's image with its boxes, phrases and scores drawn, longest side `size`."""
    im = Image.open(io.BytesIO(rec.image)).convert("RGB")
    scale = size / max(im.size)  # Up- or down-scale: tiny images need room for their labels.
    im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))))
    d = ImageDraw.Draw(im)
    pix = record_lib.boxes_to_pixels(rec.boxes, im.height, im.width)
    for i, (box, phrase, score) in enumerate(zip(pix, rec.phrases, rec.scores, strict=True)):
        color = _COLORS[i % len(_COLORS)]
        d.rectangle([float(v) for v in box], outline=color, width=2)
        label = f"{phrase[:30]} {score:.2f}"
        x, y = float(box[0]), max(0.0, float(box[1]) - 11)
        d.rectangle([x, y, x + d.textlength(label) + 2, y + 11], fill=color)
        d.text((x + 1, y), label, fill="white")
    return im


def contact_sheet(records: list[record_lib.Record], cols: int = 4, cell: int = 256) -> bytes:
    """PNG bytes of a grid of annotated thumbnails."""
    rows = max(1, -(-len(records) // cols))
    sheet = Image.new("RGB", (cols * cell, rows * cell), "white")
    for i, rec in enumerate(records):
        thumb = draw(rec, cell - 4)
        sheet.paste(thumb, ((i % cols) * cell + 2, (i // cols) * cell + 2))
    buf = io.BytesIO()
    sheet.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def render_html(records: list[record_lib.Record], title: str = "annotate preview") -> str:
    """A self-contained HTML page; every text from the data is escaped."""
    esc = lambda s: html.escape(str(s), quote=True)  # noqa: E731
    cards = []
    for rec in records:
        buf = io.BytesIO()
        draw(rec).save(buf, "JPEG", quality=85)
        b64 = base64.b64encode(buf.getvalue()).decode("ascii")
        regions = "".join(
            f"<li>{esc(p)} <span class=s>{s:.2f}</span> "
            f"[{', '.join(f'{v:.3f}' for v in b)}]</li>"
            for p, s, b in zip(rec.phrases, rec.scores, rec.boxes, strict=True)
        )
        cards.append(
            f'<div class=card><img src="data:image/jpeg;base64,{b64}" alt="">'
            f"<p class=k>{esc(rec.key)} &middot; {rec.width}x{rec.height}</p>"
            f"<p class=c>{esc(rec.caption[:500])}</p><ul>{regions or '<li>(no boxes)</li>'}</ul>"
            "</div>"
        )
    return (
        "<!doctype html><html><head><meta charset=utf-8>"
        "<meta http-equiv=Content-Security-Policy content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'\">"
        f"<title>{esc(title)}</title><style>body{{font-family:sans-serif}}"
        ".card{display:inline-block;vertical-align:top;width:330px;margin:6px}"
        ".k{color:#666;font-size:12px}.c{font-size:13px}.s{color:#06c}</style></head><body>"
        f"<h1>{esc(title)}</h1>{''.join(cards)}</body></html>"
    )
