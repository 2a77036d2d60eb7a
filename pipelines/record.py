"""The per-image record: the contract between the annotate stage and everything downstream.

One record per image, serialized as a `tf.train.Example` (readable by TFDS, big_vision, TF tooling).
Keys (schema_version 1; WORKSPACE.md keeps the same table):

  key               bytes    stable id of the source sample
  source            bytes    input file + member (or row, or URL)
  image/encoded     bytes    the stored image, JPEG
  image/format      bytes    b"jpeg"
  image/height      int64    height of the stored image in pixels
  image/width       int64    width of the stored image in pixels
  caption           bytes    the alt-text, UTF-8 (may be empty: such images are still useful negatives)
  regions/bbox      float    N*4, normalized [ymin, xmin, ymax, xmax] in [0, 1] (TFDS convention)
  regions/phrase    bytes    N, UTF-8 phrase (the best query) of each box
  regions/score     float    N, labeler score of each box for its phrase
  regions/query_rank int64   N, index of the phrase in the image's query list (provenance)
  labeler           bytes    labeler name + checkpoint fingerprint
  schema_version    int64    SCHEMA_VERSION

Only numpy and protobuf are needed here, so every stage can import this module.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from pipelines.example_proto import Example

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)

# Feature key -> (kind, required). kind is one of "bytes", "float", "int64".
FEATURES: dict[str, tuple[str, bool]] = {
    "key": ("bytes", True),
    "source": ("bytes", True),
    "image/encoded": ("bytes", True),
    "image/format": ("bytes", False),
    "image/height": ("int64", True),
    "image/width": ("int64", True),
    "caption": ("bytes", True),
    "regions/bbox": ("float", True),
    "regions/phrase": ("bytes", True),
    "regions/score": ("float", True),
    "regions/query_rank": ("int64", True),
    "labeler": ("bytes", True),
    "schema_version": ("int64", True),
}


class RecordError(ValueError):
    """A malformed record. `field` names the offending key."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"record field {field!r}: {problem}")
        self.field = field
        self.problem = problem


@dataclasses.dataclass(frozen=True, eq=False)
class Record:
    """One annotated image.

    Attributes:
      boxes: float32[N, 4] normalized [ymin, xmin, ymax, xmax].
      phrases: N UTF-8 strings.
      scores: float32[N].
      query_ranks: int64[N].
    """

    key: str
    source: str
    image: bytes
    height: int
    width: int
    caption: str
    boxes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 4), np.float32))
    phrases: tuple[str, ...] = ()
    scores: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,), np.float32))
    query_ranks: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,), np.int64))
    labeler: str = ""
    image_format: str = "jpeg"
    schema_version: int = SCHEMA_VERSION

    @property
    def num_regions(self) -> int:
        return len(self.phrases)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                a, b = np.asarray(a), np.asarray(b)
                if a.shape != b.shape or not np.array_equal(a, b):
                    return False
            elif a != b:
                return False
        return True


def validate(record: Record) -> None:
    """Raises RecordError naming the first malformed field; returns None for a valid record."""
    if not record.key:
        raise RecordError("key", "empty; every record needs a stable id")
    if not record.image:
        raise RecordError("image/encoded", "missing image bytes")
    if record.height <= 0 or record.width <= 0:
        raise RecordError(
            "image/height" if record.height <= 0 else "image/width",
            f"image size must be positive, got {record.height}x{record.width}",
        )
    if record.schema_version not in SUPPORTED_SCHEMA_VERSIONS:
        raise RecordError(
            "schema_version",
            f"{record.schema_version} is not supported (this code reads {SUPPORTED_SCHEMA_VERSIONS})",
        )
    boxes = np.asarray(record.boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise RecordError("regions/bbox", f"expected shape [N, 4], got {list(boxes.shape)}")
    n = boxes.shape[0]
    for name, count in (
        ("regions/phrase", len(record.phrases)),
        ("regions/score", np.asarray(record.scores).reshape(-1).shape[0]),
        ("regions/query_rank", np.asarray(record.query_ranks).reshape(-1).shape[0]),
    ):
        if count != n:
            raise RecordError(name, f"has {count} entries but regions/bbox has {n} boxes")
    if n == 0:
        return
    if not np.all(np.isfinite(boxes)):
        raise RecordError("regions/bbox", "contains NaN or infinity")
    if boxes.min() < 0.0 or boxes.max() > 1.0:
        bad = int(np.argwhere((boxes < 0) | (boxes > 1))[0][0])
        raise RecordError(
            "regions/bbox",
            f"box {bad} {boxes[bad].tolist()} is outside [0, 1]; boxes are normalized",
        )
    ymin, xmin, ymax, xmax = boxes.T
    if np.any(ymin > ymax):
        bad = int(np.argmax(ymin > ymax))
        raise RecordError("regions/bbox", f"box {bad} has ymin > ymax: {boxes[bad].tolist()}")
    if np.any(xmin > xmax):
        bad = int(np.argmax(xmin > xmax))
        raise RecordError("regions/bbox", f"box {bad} has xmin > xmax: {boxes[bad].tolist()}")
    scores = np.asarray(record.scores, np.float64)
    if not np.all(np.isfinite(scores)):
        raise RecordError("regions/score", "contains NaN or infinity")
    for i, phrase in enumerate(record.phrases):
        if not phrase or not phrase.strip():
            raise RecordError("regions/phrase", f"phrase {i} is empty")


def encode(record: Record) -> bytes:
    """Validates and serializes a record to `tf.train.Example` bytes."""
    validate(record)
    ex = Example()
    feat = ex.features.feature

    def put_bytes(key: str, values: list[bytes]) -> None:
        feat[key].bytes_list.value.extend(values)

    def put_float(key: str, values) -> None:
        feat[key].float_list.value.extend(np.asarray(values, np.float32).reshape(-1).tolist())

    def put_int(key: str, values) -> None:
        feat[key].int64_list.value.extend(int(v) for v in np.asarray(values).reshape(-1))

    put_bytes("key", [record.key.encode("utf-8")])
    put_bytes("source", [record.source.encode("utf-8")])
    put_bytes("image/encoded", [record.image])
    put_bytes("image/format", [record.image_format.encode("utf-8")])
    put_int("image/height", [record.height])
    put_int("image/width", [record.width])
    put_bytes("caption", [record.caption.encode("utf-8")])
    put_float("regions/bbox", record.boxes)
    put_bytes("regions/phrase", [p.encode("utf-8") for p in record.phrases])
    put_float("regions/score", record.scores)
    put_int("regions/query_rank", record.query_ranks)
    put_bytes("labeler", [record.labeler.encode("utf-8")])
    put_int("schema_version", [record.schema_version])
    # Deterministic: the same record always gives the same bytes (map order is sorted).
    return ex.SerializeToString(deterministic=True)


def _values(feat, key: str):
    kind, required = FEATURES[key]
    if key not in feat:
        if required:
            raise RecordError(key, "missing from the serialized example")
        return []
    which = feat[key].WhichOneof("kind")
    if which is None:  # An empty list written by TF has no kind set.
        return []
    if which != f"{kind}_list":
        raise RecordError(key, f"expected a {kind}_list, found {which}")
    return list(getattr(feat[key], which).value)


def _single(feat, key: str):
    values = _values(feat, key)
    if len(values) != 1:
        raise RecordError(key, f"expected exactly one value, found {len(values)}")
    return values[0]


def _utf8(field: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(field, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None


def decode(data: bytes, *, check: bool = True) -> Record:
    """Parses `tf.train.Example` bytes into a Record (validated unless check=False)."""
    ex = Example()
    try:
        ex.ParseFromString(data)
    except Exception as e:  # protobuf raises DecodeError; keep the message readable.
        raise RecordError("<example>", f"not a serialized tf.train.Example ({e})") from None
    feat = ex.features.feature
    bbox = np.asarray(_values(feat, "regions/bbox"), np.float32)
    if bbox.size % 4:
        raise RecordError("regions/bbox", f"length {bbox.size} is not a multiple of 4")
    fmt = _values(feat, "image/format")
    record = Record(
        key=_utf8("key", _single(feat, "key")),
        source=_utf8("source", _single(feat, "source")),
        image=_single(feat, "image/encoded"),
        image_format=_utf8("image/format", fmt[0]) if fmt else "jpeg",
        height=int(_single(feat, "image/height")),
        width=int(_single(feat, "image/width")),
        caption=_utf8("caption", _single(feat, "caption")),
        boxes=bbox.reshape(-1, 4),
        phrases=tuple(_utf8("regions/phrase", p) for p in _values(feat, "regions/phrase")),
        scores=np.asarray(_values(feat, "regions/score"), np.float32),
        query_ranks=np.asarray(_values(feat, "regions/query_rank"), np.int64),
        labeler=_utf8("labeler", _single(feat, "labeler")),
        schema_version=int(_single(feat, "schema_version")),
    )
    if check:
        validate(record)
    return record


class TrainingFields(NamedTuple):
    """What the training loader reads of a record (see `decode_training_fields`).

    boxes: float32[N, 4] normalized [ymin, xmin, ymax, xmax]; phrases: N strings.
    """

    image: bytes
    caption: str
    boxes: np.ndarray
    phrases: tuple[str, ...]

    @classmethod
    def from_record(cls, rec: Record) -> TrainingFields:
        """The loader's fields of a fully decoded Record (same arrays, not copied)."""
        return cls(rec.image, rec.caption, rec.boxes, rec.phrases)


def decode_training_fields(data: bytes) -> TrainingFields:
    """Fast path for the trainer: image, caption, boxes and phrases only, ~5x cheaper than decode.

    Reads just those four fields (plus the schema version) and checks only what the loader relies
    on: the schema version is supported, the image is not empty, the box list is N * 4 floats with
    one phrase per box, and the text is UTF-8. The rest of `validate` (boxes finite, ordered and in
    [0, 1]; non-empty phrases; the other fields) is skipped: `encode` ran it when the record was
    written. Whatever this fast path rejects or cannot read goes through `decode(data)`, so a
    malformed record still raises the RecordError that names its field.
    """
    try:
        ex = Example()
        ex.ParseFromString(data)
        feat = ex.features.feature
        if feat["schema_version"].int64_list.value[0] not in SUPPORTED_SCHEMA_VERSIONS:
            raise ValueError("schema_version")
        # A missing map key would read as an empty list (zero regions, silently): require the
        # region fields and the list kind `encode` writes, and exactly one image and caption.
        if "regions/bbox" not in feat or "regions/phrase" not in feat:
            raise ValueError("regions")
        bbox_f, phrase_f = feat["regions/bbox"], feat["regions/phrase"]
        if (bbox_f.WhichOneof("kind") not in (None, "float_list")
                or phrase_f.WhichOneof("kind") not in (None, "bytes_list")):
            raise ValueError("regions kind")
        bbox = bbox_f.float_list.value
        phrases = tuple(p.decode("utf-8") for p in phrase_f.bytes_list.value)
        images, captions = feat["image/encoded"].bytes_list.value, feat["caption"].bytes_list.value
        if len(images) != 1 or len(captions) != 1:
            raise ValueError("image/encoded or caption")
        image = images[0]
        if len(bbox) != 4 * len(phrases) or not image:
            raise ValueError("regions/bbox or image/encoded")
        return TrainingFields(
            image=image,
            caption=captions[0].decode("utf-8"),
            boxes=np.array(bbox, np.float32).reshape(-1, 4),
            phrases=phrases,
        )
    except Exception:  # noqa: BLE001 - the full decode below names the problem (or accepts it)
        pass
    return TrainingFields.from_record(decode(data))


def boxes_to_pixels(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """float[N, 4] normalized [ymin, xmin, ymax, xmax] -> float[N, 4] pixel [x0, y0, x1, y1]."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return np.stack(
        [boxes[:, 1] * width, boxes[:, 0] * height, boxes[:, 3] * width, boxes[:, 2] * height], -1
    )


def boxes_from_xywh(xywh: np.ndarray, height: float, width: float,
                    dtype: np.typing.DTypeLike = np.float32) -> np.ndarray:
    """COCO pixel boxes float[N, 4] [x, y, w, h] -> normalized [ymin, xmin, ymax, xmax], clipped.

    The one COCO box converter (annotate's converters, evaluation's RefCOCO reader). float32 is
    the records' dtype; evaluation asks for float64 so its IoUs are not rounded first.
    """
    xywh = np.asarray(xywh, np.float64).reshape(-1, 4)
    x, y, w, h = xywh.T
    out = np.stack([y / height, x / width, (y + h) / height, (x + w) / width], -1)
    return np.clip(out, 0.0, 1.0).astype(dtype)
