"""Image decoding and validation for the annotate stage (Pillow only).

`decode_image` turns untrusted bytes into (a) the JPEG to store in the record and (b) RGB pixels for
the labeler, or raises `BadInput` with a short reason that becomes the dead-letter reason:

  empty_image        zero bytes
  not_an_image       Pillow cannot identify the format
  image_too_large    width * height over the pixel cap (checked from the header, before decoding)
  truncated_image    the file ends early or its data is corrupt
  image_too_small    a side under `min_side` pixels

Normalization: EXIF orientation is applied (boxes are relative to the upright image, so the stored
copy must be upright too); every mode becomes 8-bit RGB: CMYK and YCbCr are converted, grayscale is
replicated, palette goes through RGBA, alpha is composited on white, 16-bit and float data are rescaled
to 0..255 (Pillow's own convert() would clip 16-bit values instead of scaling them).
"""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps

# Never decode truncated files into half-grey images; they are dead-lettered instead.
ImageFile.LOAD_TRUNCATED_IMAGES = False


# Signatures of the formats img2dataset writes (JPEG, PNG, GIF, WebP's RIFF container).
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF8", b"RIFF")


class BadInput(ValueError):
    """Input that cannot become a record; `reason` is the dead-letter reason."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail[:300]


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """How images are validated and stored.

    Attributes:
      max_pixels: cap on width * height of the source image (decompression bombs).
      min_side: smallest accepted side in pixels.
      store_max_side: longest side of the stored copy (0 keeps the original size).
      detect_max_side: longest side of the pixels handed to the labeler (0: original size).
      jpeg_quality: quality of re-encoded JPEGs.
    """

    max_pixels: int = 64_000_000
    min_side: int = 8
    store_max_side: int = 0
    detect_max_side: int = 1024
    jpeg_quality: int = 90


@dataclasses.dataclass
class DecodedImage:
    """Attributes:
    stored: JPEG bytes of the stored copy; height/width: its size.
    pixels: uint8[h, w, 3] RGB for the labeler (longest side <= detect_max_side).
    """

    stored: bytes
    height: int
    width: int
    pixels: np.ndarray


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB (see the module docstring)."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if im.mode == "F":
            top = max(float(arr.max(initial=0)), 1.0) if arr.max(initial=0) > 1.0 else 1.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode != "RGB":
        return im.convert("RGB")
    return im


def _resized(im: Image.Image, max_side: int) -> Image.Image:
    if max_side <= 0 or max(im.size) <= max_side:
        return im
    scale = max_side / max(im.size)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    return im.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)


def _open(data: bytes, config: DecodeConfig) -> Image.Image:
    """Untrusted bytes -> an opened (not yet decoded) image within the caps; raises BadInput."""
    if not data:
        raise BadInput("empty_image", "zero bytes")
    try:
        with warnings.catch_warnings():
            # Our own cap below replaces Pillow's DecompressionBombWarning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise BadInput("image_too_large", str(e)) from None
    except Exception as e:  # UnidentifiedImageError and friends.
        # A known signature that Pillow cannot parse is an image cut short inside its headers.
        reason = "truncated_image" if data.startswith(_MAGIC) else "not_an_image"
        raise BadInput(reason, f"{type(e).__name__}: {e}") from None
    width, height = im.size
    if width * height > config.max_pixels:
        raise BadInput("image_too_large", f"{width}x{height} over the cap of {config.max_pixels} px")
    if min(width, height) < config.min_side:
        raise BadInput("image_too_small", f"{width}x{height}, min side {config.min_side}")
    return im


def _upright(im: Image.Image, draft_side: int = 0) -> tuple[Image.Image, Image.Image]:
    """Decodes `im` -> (upright image in its own mode, its 8-bit RGB); raises BadInput."""
    try:
        if im.format == "JPEG" and draft_side > 0:
            # JPEG DCT scaling: decode at 1/2, 1/4 or 1/8 size directly, several times faster.
            im.draft("RGB", (draft_side, draft_side))
        im.load()
        im = ImageOps.exif_transpose(im)
        return im, _to_rgb(im)
    except Exception as e:  # Truncated or corrupt data surfaces only when pixels are decoded.
        raise BadInput("truncated_image", f"{type(e).__name__}: {e}") from None


def upright_rgb(data: bytes, config: DecodeConfig) -> np.ndarray:
    """Untrusted bytes -> uint8[h, w, 3] upright RGB at full size (what a model is shown after
    resizing), with the same checks and BadInput reasons as decode_image."""
    return np.asarray(_upright(_open(data, config))[1], dtype=np.uint8)


def decode_image(data: bytes, config: DecodeConfig) -> DecodedImage:
    """Validates and normalizes untrusted image bytes; raises BadInput on failure."""
    im = _open(data, config)
    width, height = im.size
    source_format = im.format
    try:
        # getexif() may read to the end of a PNG, so it belongs inside the truncation guard.
        orientation = im.getexif().get(0x0112, 1)
    except Exception as e:
        raise BadInput("truncated_image", f"{type(e).__name__}: {e}") from None
    draft = 0
    if config.store_max_side > 0 and config.detect_max_side > 0:
        draft = max(config.store_max_side, config.detect_max_side)
    im, rgb = _upright(im, draft)

    stored_im = _resized(rgb, config.store_max_side)
    keep_original = (
        source_format == "JPEG"
        and im.mode == "RGB"
        and orientation in (None, 1)
        and stored_im.size == (width, height)
    )
    if keep_original:
        stored = data  # No re-encoding: avoids a second generation of JPEG loss.
    else:
        buf = io.BytesIO()
        stored_im.save(buf, "JPEG", quality=config.jpeg_quality)
        stored = buf.getvalue()
    pixels = np.asarray(_resized(rgb, config.detect_max_side), dtype=np.uint8)
    return DecodedImage(stored=stored, height=stored_im.height, width=stored_im.width, pixels=pixels)
