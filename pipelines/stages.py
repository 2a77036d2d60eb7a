"""The annotate pipeline's DoFns: read files, decode + build queries, post-process to records, write.

Every DoFn emits `(tag, value)` pairs on its one output (pipelines/tags.py says why) and routes each
unit of input to exactly one of: the data it passes on, `DEAD` (a DeadLetter) or `FILTERED` (a
reason string), so the manifest counts add up on any runner. Labeler batches are cut here, inside
one call (at most `max_batch_size` samples of one input file), not by BatchElements: a batch emitted
from `finish_bundle` is dropped by Beam 2.77's DaskRunner. Units are also counted in Beam metrics
(`annotate` namespace) where the runner collects them; time spent per stage goes to
`time_us/<stage>` counters (the benchmark reads them).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipelines import record as record_lib
from pipelines import shard_sink
from pipelines.decode import BadInput, DecodeConfig, decode_image
from pipelines.manifest import record_summary, write_atomic
from pipelines.postprocess import PostprocessConfig, select_regions
from pipelines.queries import queries_from_alt_text
from pipelines.sources import DeadLetter, RawSample, SourceConfig, read_file
from pipelines.tags import (
    DEAD,
    DEAD_WRITTEN,
    FILTERED,
    LABELER,
    NOTE,
    PREPARED,
    PREVIEW,
    READ,
    RECORD,
    SAMPLES,
    SHARD,
    SUMMARY,
)

NS = "annotate"


@dataclasses.dataclass
class Prepared:
    """A decoded, validated sample ready for the labeler.

    Attributes:
      image: JPEG bytes of the stored copy, `height` x `width` pixels.
      pixels: uint8[h, w, 3] RGB for the labeler (dropped after detection).
      queries: n-gram queries of the caption.
      metadata: the sample's JSON (ground-truth regions for the reference labeler).
    """

    key: str
    source: str
    caption: str
    image: bytes
    height: int
    width: int
    pixels: np.ndarray | None
    queries: list[str]
    metadata: dict[str, Any]


def _us(start: float) -> int:
    return int((time.perf_counter() - start) * 1e6)


class ReadFileFn(beam.DoFn):
    """Path -> (SAMPLES, [RawSample]) batches of at most `batch_size`, (DEAD, DeadLetter), and
    (READ, the file's unit count)."""

    def __init__(self, config: SourceConfig, batch_size: int):
        self._config, self._batch_size = config, batch_size
        self._read = Metrics.counter(NS, "read")
        self._time = Metrics.counter(NS, "time_us/read")

    def process(self, path: str) -> Iterator[tuple[str, Any]]:
        n = 0
        batch: list[RawSample] = []
        start = time.perf_counter()
        try:
            with FileSystems.open(path) as f:
                for item in read_file(path, f, self._config):
                    n += 1
                    self._time.inc(_us(start))
                    if isinstance(item, DeadLetter):
                        Metrics.counter(NS, f"dead_letter/{item.reason}").inc()
                        yield DEAD, item
                    else:
                        batch.append(item)
                        if len(batch) == self._batch_size:
                            yield SAMPLES, batch
                            batch = []
                    start = time.perf_counter()
        except Exception as e:  # noqa: BLE001 - one bad file must not fail the whole job
            # Unreadable, vanished or corrupt in a way its reader does not name (a garbage length
            # field, a column of the wrong type): the rest of the file is one dead letter, so the
            # counts still add up (read = written + dead-lettered + filtered).
            n += 1
            yield DEAD, DeadLetter(path, "unreadable_file",
                                   f"{type(e).__name__}: {e} (after {n - 1} items)")
        if batch:  # the samples read before the end (or the error) still go on
            yield SAMPLES, batch
        self._read.inc(n)
        yield READ, n


@dataclasses.dataclass(frozen=True)
class QueryConfig:
    max_ngram: int = 10
    max_queries: int = 300
    max_words: int = 256


class PrepareFn(beam.DoFn):
    """[RawSample] -> (PREPARED, [Prepared]) (one labeler batch) and a (DEAD, DeadLetter) per
    sample it drops; (NOTE, kind) for kept-but-changed samples.

    Captions: not UTF-8 -> `caption_not_utf8`; empty or whitespace-only -> `empty_caption` unless
    keep_empty_captions; longer than max_caption_chars -> cut at a word boundary (NOTE
    `caption_truncated`; the trainer reads 64 tokens anyway).
    """

    def __init__(self, decode: DecodeConfig, queries: QueryConfig, *, keep_empty_captions: bool,
                 max_caption_chars: int, progress: bool):
        self._decode, self._queries = decode, queries
        self._keep_empty, self._max_chars, self._progress = (
            keep_empty_captions, max_caption_chars, progress)
        self._t_decode = Metrics.counter(NS, "time_us/decode")
        self._t_query = Metrics.counter(NS, "time_us/query")

    def setup(self) -> None:
        self._seen, self._t0, self._last = 0, time.time(), time.time()

    def _tick(self) -> None:
        self._seen += 1
        now = time.time()
        if self._progress and now - self._last >= 5.0:
            self._last = now
            rate = self._seen / max(now - self._t0, 1e-9)
            print(f"annotate: {self._seen:,} images decoded in this worker ({rate:.1f}/s)",
                  file=sys.stderr, flush=True)

    def _dead(self, sample: RawSample, reason: str, detail: str = "") -> tuple[str, DeadLetter]:
        Metrics.counter(NS, f"dead_letter/{reason}").inc()
        return DEAD, DeadLetter(sample.source, reason, detail)

    def process(self, samples: list[RawSample]) -> Iterator[tuple[str, Any]]:
        batch = []
        for sample in samples:
            for tag, value in self._prepare(sample):
                if tag == PREPARED:
                    batch.append(value)
                else:
                    yield tag, value
        if batch:
            yield PREPARED, batch

    def _prepare(self, sample: RawSample) -> Iterator[tuple[str, Any]]:
        self._tick()
        start = time.perf_counter()
        try:
            caption = (sample.text or b"").decode("utf-8")
        except UnicodeDecodeError as e:
            yield self._dead(sample, "caption_not_utf8", f"{e.reason} at byte {e.start}")
            return
        caption = caption.strip()
        if not caption and not self._keep_empty:
            yield self._dead(sample, "empty_caption", "empty or whitespace-only alt-text")
            return
        if len(caption) > self._max_chars:
            cut = caption[: self._max_chars]
            caption = cut.rsplit(None, 1)[0] if " " in cut else cut
            Metrics.counter(NS, "note/caption_truncated").inc()
            yield NOTE, "caption_truncated"
        try:
            image = decode_image(sample.image or b"", self._decode)
        except BadInput as e:
            yield self._dead(sample, e.reason, e.detail)
            return
        finally:
            self._t_decode.inc(_us(start))
        start = time.perf_counter()
        q = self._queries
        queries = queries_from_alt_text(caption, max_ngram=q.max_ngram, max_queries=q.max_queries,
                                        max_words=q.max_words)
        self._t_query.inc(_us(start))
        yield PREPARED, Prepared(
            key=sample.key, source=sample.source, caption=caption, image=image.stored,
            height=image.height, width=image.width, pixels=image.pixels, queries=queries,
            metadata=sample.metadata)


@dataclasses.dataclass(frozen=True)
class LabelerError:
    """The labeler failed on the batch this sample was in ('Type: message'); the sample becomes a
    `labeler_error` dead letter (inference.LabelerModelHandler catches the error)."""

    detail: str


class ToRecordFn(beam.DoFn):
    """PredictionResult -> (RECORD, (shard index, (record key, record bytes))); FILTERED / DEAD
    otherwise.

    For the manifest: SUMMARY (box statistics), LABELER (fingerprint), PREVIEW (a deterministic
    hash rank + record bytes, so the preview sample is the same on every run), NOTE (one per
    candidate the labeler dropped, by reason).
    """

    def __init__(self, post: PostprocessConfig, *, num_shards: int, require_boxes: bool):
        self._post, self._num_shards, self._require = post, num_shards, require_boxes
        self._written = Metrics.counter(NS, "records_out")
        self._boxes = Metrics.counter(NS, "boxes_kept")
        self._t_post = Metrics.counter(NS, "time_us/postprocess")

    def process(self, result) -> Iterator[tuple[str, Any]]:
        start = time.perf_counter()
        p: Prepared = result.example
        if isinstance(result.inference, LabelerError):
            Metrics.counter(NS, "dead_letter/labeler_error").inc()
            yield DEAD, DeadLetter(p.source, "labeler_error", result.inference.detail)
            return
        detections, fingerprint = result.inference
        for note in detections.notes:  # candidates the labeler dropped (bad GRIT chunks)
            Metrics.counter(NS, f"note/{note}").inc()
            yield NOTE, note
        try:
            regions = select_regions(detections, p.queries, self._post)
        except ValueError as e:
            Metrics.counter(NS, "dead_letter/bad_detections").inc()
            yield DEAD, DeadLetter(p.source, "bad_detections", str(e))
            return
        if self._require and not regions.phrases:
            Metrics.counter(NS, "filtered/no_boxes").inc()
            yield FILTERED, "no_boxes"
            return
        rec = record_lib.Record(
            key=p.key, source=p.source, image=p.image, height=p.height, width=p.width,
            caption=p.caption, boxes=regions.boxes, phrases=regions.phrases,
            scores=regions.scores, query_ranks=regions.query_ranks, labeler=fingerprint,
        )
        try:
            data = record_lib.encode(rec)
        except record_lib.RecordError as e:
            Metrics.counter(NS, "dead_letter/invalid_record").inc()
            yield DEAD, DeadLetter(p.source, "invalid_record", str(e))
            return
        self._written.inc()
        self._boxes.inc(len(regions.phrases))
        self._t_post.inc(_us(start))
        yield SUMMARY, record_summary(regions.scores, regions.boxes, regions.phrases)
        yield LABELER, fingerprint
        yield PREVIEW, (shard_sink.shard_index("preview/" + p.key, 1 << 62), data)
        # The key travels with the record: WriteShardFn writes each shard in key order.
        yield RECORD, (shard_sink.shard_index(p.key, self._num_shards), (p.key, data))


class WriteShardFn(beam.DoFn):
    """(shard index, (key, record) pairs) -> (SHARD, (shard index, record count)); the shard is
    written atomically, in key order (shard_sink.write_shard)."""

    def __init__(self, output_dir: str, split: str, num_shards: int):
        self._out, self._split, self._n = output_dir, split, num_shards
        self._t_write = Metrics.counter(NS, "time_us/write")

    def process(self, element) -> Iterator[tuple[str, tuple[int, int]]]:
        index, records = element
        start = time.perf_counter()
        name = shard_sink.shard_name(self._split, index, self._n)
        count = shard_sink.write_shard(self._out, name, records)
        self._t_write.inc(_us(start))
        yield SHARD, (index, count)


DEAD_LETTERS = "dead_letters.jsonl"


class WriteDeadLettersFn(beam.DoFn):
    """(any key, every DeadLetter) -> OUT/dead_letters.jsonl, one JSON line each, written whole
    (manifest.write_atomic); emits (DEAD_WRITTEN, {reason: count}) of what it wrote, which the
    manifest counts. A run without dead letters never gets here: Finalize writes the empty file."""

    def __init__(self, output_dir: str):
        self._out = output_dir

    def process(self, element) -> Iterator[tuple[str, dict[str, int]]]:
        _, letters = element
        by_reason: dict[str, int] = {}

        def lines() -> Iterator[bytes]:
            for d in letters:
                by_reason[d.reason] = by_reason.get(d.reason, 0) + 1
                yield (d.to_json() + "\n").encode("utf-8")

        write_atomic(FileSystems.join(self._out, DEAD_LETTERS), lines())
        yield DEAD_WRITTEN, by_reason


def describe_error(exc: BaseException) -> str:
    """'Type: message' of an exception."""
    return f"{type(exc).__name__}: {exc}"
