"""The annotate job's last step: runs once, after every shard is written.

It fills in empty shards and removes stale ones (shard_sink.finalize_shards), writes manifest.json
from the small side inputs the pipeline computed (counts by reason, box statistics, labeler
fingerprints, shard counts), and renders preview.html / preview.png from a deterministic sample.
Every file is written under a temp name and renamed, so a retried step leaves whole files only.
"""

from __future__ import annotations

import sys

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipelines import manifest as manifest_lib
from pipelines import record as record_lib
from pipelines import shard_sink


class Finalize(beam.DoFn):
    """Runs once, after every shard is written: empty shards, manifest, preview."""

    def __init__(self, opts: dict, num_shards: int, config: dict):
        self._o, self._n, self._config = opts, num_shards, config

    def process(self, _, reads, shards, dead, filtered, notes, boxes, labelers, previews):
        out = self._o["output"]
        written: dict[int, int] = {}
        for index, count in shards:
            written[index] = max(written.get(index, 0), count)
        shard_list = shard_sink.finalize_shards(out, self._o["split"], self._n, written)
        empty_boxes = manifest_lib.BoxStatsFn()
        box_stats = boxes[0] if boxes else empty_boxes.extract_output(
            empty_boxes.create_accumulator())
        doc = manifest_lib.build_manifest(
            read=sum(reads), shards=shard_list, dead_lettered=dict(dead), filtered=dict(filtered),
            boxes=box_stats, config=self._config,
            labelers=sorted(set(labelers)) or [self._o["labeler"]], notes=dict(notes),
        )
        if not doc["counts"]["balanced"]:
            print(f"annotate: WARNING counts do not add up: {doc['counts']}", file=sys.stderr)
        manifest_lib.write_json(FileSystems.join(out, "manifest.json"), doc)
        from pipelines import preview

        recs = [record_lib.decode(data) for _, data in sorted(previews)]
        manifest_lib.write_atomic(FileSystems.join(out, "preview.html"),
                      preview.render_html(recs).encode("utf-8"))
        manifest_lib.write_atomic(FileSystems.join(out, "preview.png"), preview.contact_sheet(recs))
        yield doc
