"""Readers for the annotate stage's inputs: webdataset tars, img2dataset parquet, TFRecord.

Each reader takes one file (opened through Beam FileSystems, so local paths and gs:// both work) and
yields, in order, either a `RawSample` or a `DeadLetter`; every unit it reads is exactly one of the two,
which is what makes the manifest's `read = written + dead_lettered + filtered` checkable.

Webdataset (img2dataset layout): members `{key}.jpg|png|webp`, `{key}.txt`, `{key}.json`, grouped by
key (the member name up to the first dot of its basename), consecutive as webdataset requires. The tar
is read in stream mode, never extracted. Dead letters: `tar_non_file_member` (directory, link, device),
`unsafe_member_name` (absolute or `..`), `missing_image`, `missing_text`, `truncated_tar`.

Parquet (img2dataset `output_format=parquet`): one row per sample; image bytes in `image_key`
(default: the first of jpg/png/webp/image present), text in `text_key` (default `caption`), key in
`key`. A `json` column holding a JSON string is parsed into the metadata (ground-truth regions);
the columns url, width, height, caption, noun_chunks and ref_exps (GRIT) are added to it.

TFRecord of `tf.train.Example` (parsed with pipelines.example_proto, no TensorFlow): image in
`image_key` (default `image/encoded`), text in `text_key` (default `caption`), metadata JSON in
`json_key` (default `json`) when present. Record CRCs are not verified; a short read is
`truncated_tfrecord`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import posixpath
import struct
import tarfile
from collections.abc import Iterator
from typing import Any, BinaryIO

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
FORMATS = ("webdataset", "parquet", "tfrecord")


@dataclasses.dataclass
class RawSample:
    """One undecoded sample. text is None when the input had no text for it."""

    key: str
    source: str
    image: bytes | None
    text: bytes | None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class DeadLetter:
    """One unit of input that produced no record, and why."""

    source: str
    reason: str
    detail: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {"source": self.source, "reason": self.reason, "detail": self.detail[:300]},
            ensure_ascii=False,
        )


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    input_format: str = "webdataset"
    image_key: str | None = None
    text_key: str | None = None
    json_key: str | None = None


Item = RawSample | DeadLetter


def _parse_json(raw: bytes | str | None, source: str) -> tuple[dict[str, Any], str | None]:
    """Returns (metadata, problem). Bad JSON does not lose the sample: it only loses the metadata."""
    if raw is None:
        return {}, None
    if isinstance(raw, dict):  # a parquet struct column: already parsed
        return raw, None
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError, TypeError) as e:
        return {}, f"{source}: metadata JSON unreadable ({e})"
    return (value if isinstance(value, dict) else {}), None


# --------------------------------------------------------------------------------------- webdataset
def _split_member(name: str) -> tuple[str, str]:
    """'dir/000001.jpg' -> ('dir/000001', 'jpg'), the webdataset key/extension convention."""
    dirname, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return (posixpath.join(dirname, stem) if dirname else stem), ext.lower()


def _unsafe(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts


def _emit_group(path: str, key: str, parts: dict[str, bytes]) -> Item:
    source = f"{path}:{key}"
    image_ext = next((e for e in IMAGE_EXTS if e in parts), None)
    if image_ext is None:
        return DeadLetter(source, "missing_image", f"members: {sorted(parts)}")
    if "txt" not in parts:
        return DeadLetter(source, "missing_text", f"members: {sorted(parts)}")
    metadata, _ = _parse_json(parts.get("json"), source)
    return RawSample(key=key, source=source, image=parts[image_ext], text=parts["txt"],
                     metadata=metadata)


class _NotingTarInfo(tarfile.TarInfo):
    """TarInfo that marks its TarFile when a header is cut short or garbled. tarfile ends the
    iteration quietly there (past the first member), as if the archive had ended; without this
    mark the group being read would be emitted as complete, minus its remaining members."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except (tarfile.TruncatedHeaderError, tarfile.InvalidHeaderError) as e:
            tar.locca_bad_header = f"{type(e).__name__}: {e}"
            raise


def read_webdataset(path: str, f: BinaryIO) -> Iterator[Item]:
    """Yields one item per sample group (or bad member) of a webdataset tar, streaming."""
    key: str | None = None
    parts: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=f, mode="r|*", tarinfo=_NotingTarInfo) as tar:
            for member in tar:
                if not member.isfile():
                    kind = "directory" if member.isdir() else "link" if member.issym() or \
                        member.islnk() else "special file"
                    yield DeadLetter(f"{path}:{member.name}", "tar_non_file_member", kind)
                    continue
                if _unsafe(member.name):
                    yield DeadLetter(f"{path}:{member.name}", "unsafe_member_name",
                                     "absolute path or '..' component")
                    continue
                member_key, ext = _split_member(member.name)
                if member_key != key:
                    if key is not None:
                        yield _emit_group(path, key, parts)
                    key, parts = member_key, {}
                data = tar.extractfile(member)
                parts[ext] = data.read() if data is not None else b""
            if getattr(tar, "locca_bad_header", None):
                raise tarfile.ReadError(f"archive cut or corrupt at a member header "
                                        f"({tar.locca_bad_header})")
    except (tarfile.TarError, EOFError, OSError) as e:
        # The group being read when the tar ended is incomplete: it is the dead letter.
        where = f"{path}:{key}" if key is not None else path
        yield DeadLetter(where, "truncated_tar", f"{type(e).__name__}: {e}")
        return
    if key is not None:
        yield _emit_group(path, key, parts)


# ----------------------------------------------------------------------------------------- parquet
# Columns copied into the metadata when its JSON lacks them: img2dataset's own, and the GRIT span
# lists with the caption their offsets index (`--labeler grit`).
_PARQUET_METADATA = ("url", "width", "height", "caption", "noun_chunks", "ref_exps")


def read_parquet(path: str, f: BinaryIO, config: SourceConfig) -> Iterator[Item]:
    """Yields one item per row of an img2dataset parquet file, a row group at a time."""
    import pyarrow.parquet as pq  # Beam's dependency; imported here so tar-only users skip it.

    try:
        pf = pq.ParquetFile(io.BytesIO(f.read()))
    except Exception as e:
        yield DeadLetter(path, "unreadable_parquet", f"{type(e).__name__}: {e}")
        return
    names = pf.schema_arrow.names
    image_key = config.image_key or next(
        (c for c in ("jpg", "png", "webp", "image", "image_bytes") if c in names), None
    )
    text_key = config.text_key or next((c for c in ("caption", "txt", "text") if c in names), None)
    json_key = config.json_key or ("json" if "json" in names else None)
    row = 0
    for batch in pf.iter_batches(batch_size=256):
        for values in batch.to_pylist():
            source = f"{path}:row{row}"
            key = str(values.get("key") or f"{posixpath.basename(path)}-{row}")
            row += 1
            image = values.get(image_key) if image_key else None
            if isinstance(image, dict):  # HF-style struct {"bytes": ..., "path": ...}
                image = image.get("bytes")
            if image is None:
                yield DeadLetter(source, "missing_image", f"null or absent column {image_key!r}")
                continue
            if not isinstance(image, (bytes, bytearray)):
                yield DeadLetter(source, "missing_image", f"column {image_key!r} holds "
                                 f"{type(image).__name__}, not image bytes; set --image_key")
                continue
            text = values.get(text_key) if text_key else None
            if isinstance(text, str):
                text = text.encode("utf-8")
            if text is None:
                yield DeadLetter(source, "missing_text", f"null or absent column {text_key!r}")
                continue
            if not isinstance(text, (bytes, bytearray)):
                yield DeadLetter(source, "missing_text", f"column {text_key!r} holds "
                                 f"{type(text).__name__}, not text; set --text_key")
                continue
            metadata, _ = _parse_json(values.get(json_key) if json_key else None, source)
            for k in _PARQUET_METADATA:
                if k in values and k not in metadata:
                    metadata[k] = values[k]
            yield RawSample(key=key, source=source, image=bytes(image), text=text,
                            metadata=metadata)


# ---------------------------------------------------------------------------------------- tfrecord
def _crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), bitwise: only used on 8-byte TFRecord length fields."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The masked CRC TFRecord stores (TensorFlow's crc32c::Mask)."""
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _tfrecords(f: BinaryIO) -> Iterator[bytes]:
    """The payloads of a TFRecord file: u64 length, u32 masked crc32c of the length, data, u32
    crc of the data. The length's CRC is checked (a corrupt length would otherwise ask for
    gigabytes); the data's is not (it costs a pass over every image in Python, and a damaged
    payload fails its Example parse or image decode, which dead-letters it)."""
    while True:
        header = f.read(12)
        if not header:
            return
        if len(header) < 12:
            raise EOFError("file ends inside a record header")
        (length,) = struct.unpack("<Q", header[:8])
        (crc,) = struct.unpack("<I", header[8:])
        if crc != masked_crc32c(header[:8]):
            raise EOFError(f"corrupt record header (length field {length} fails its CRC); "
                           "the rest of the file is not read")
        data = f.read(length)
        if len(data) < length or len(f.read(4)) < 4:
            raise EOFError(f"file ends inside a {length}-byte record")
        yield data


def _first(feat, name: str) -> bytes | None:
    values = feat[name].bytes_list.value if name in feat else []
    return values[0] if values else None


def read_tfrecord(path: str, f: BinaryIO, config: SourceConfig) -> Iterator[Item]:
    """Yields one item per tf.train.Example of a TFRecord file."""
    from pipelines.example_proto import Example

    image_key = config.image_key or "image/encoded"
    text_key = config.text_key or "caption"
    json_key = config.json_key or "json"
    index = 0
    try:
        for payload in _tfrecords(f):
            source = f"{path}:record{index}"
            index += 1
            ex = Example()
            try:
                ex.ParseFromString(payload)
            except Exception as e:
                yield DeadLetter(source, "bad_example", f"{type(e).__name__}: {e}")
                continue
            feat = ex.features.feature
            image, text = _first(feat, image_key), _first(feat, text_key)
            if image is None:
                yield DeadLetter(source, "missing_image", f"no bytes feature {image_key!r}")
                continue
            if text is None:
                yield DeadLetter(source, "missing_text", f"no bytes feature {text_key!r}")
                continue
            raw_key = _first(feat, "key")
            key = raw_key.decode("utf-8", "replace") if raw_key else \
                f"{posixpath.basename(path)}-{index - 1}"
            metadata, _ = _parse_json(_first(feat, json_key), source)
            yield RawSample(key=key, source=source, image=image, text=text, metadata=metadata)
    except EOFError as e:
        yield DeadLetter(f"{path}:record{index}", "truncated_tfrecord", str(e))


def read_file(path: str, f: BinaryIO, config: SourceConfig) -> Iterator[Item]:
    """Dispatches on the input format."""
    if config.input_format == "webdataset":
        return read_webdataset(path, f)
    if config.input_format == "parquet":
        return read_parquet(path, f, config)
    if config.input_format == "tfrecord":
        return read_tfrecord(path, f, config)
    raise ValueError(f"unknown input format {config.input_format!r}; expected one of {FORMATS}")
