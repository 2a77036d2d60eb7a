"""The annotate job's last step: runs once, after every shard is written.

It fills in empty shards and removes stale ones (shard_sink.finalize_shards), writes manifest.json
from the one summary the pipeline combined (manifest.ManifestFn: counts by reason, box statistics,
labeler fingerprints, shard counts), writes an empty dead_letters.jsonl when the run had no dead
letters, and renders preview.html / preview.png from a deterministic sample. Every file is written
under a temp name and renamed, so a retried step leaves whole files only.
"""

from __future__ import annotations

import sys

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipelines import manifest as manifest_lib
from pipelines import record as record_lib
from pipelines import shard_sink
from pipelines.stages import DEAD_LETTERS


class Finalize(beam.DoFn):
    """Runs once, after every shard is written: empty shards, manifest, preview."""

    def __init__(self, opts: dict, num_shards: int, config: dict):
        self._o, self._n, self._config = opts, num_shards, config

    def process(self, summary: dict):
        out = self._o["output"]
        shard_list = shard_sink.finalize_shards(out, self._o["split"], self._n, summary["shards"])
        if not summary["dead_letters_written"]:  # replaces an earlier run's file too
            manifest_lib.write_atomic(FileSystems.join(out, DEAD_LETTERS), b"")
        doc = manifest_lib.build_manifest(
            read=summary["read"], shards=shard_list, dead_lettered=summary["dead_lettered"],
            filtered=summary["filtered"], boxes=summary["boxes"], config=self._config,
            labelers=summary["labelers"] or [self._o["labeler"]], notes=summary["notes"],
        )
        if not doc["counts"]["balanced"]:
            print(f"annotate: WARNING counts do not add up: {doc['counts']}", file=sys.stderr)
        manifest_lib.write_json(FileSystems.join(out, "manifest.json"), doc)
        from pipelines import preview

        recs = [record_lib.decode(data) for _, data in summary["previews"]]
        manifest_lib.write_atomic(FileSystems.join(out, "preview.html"),
                      preview.render_html(recs).encode("utf-8"))
        manifest_lib.write_atomic(FileSystems.join(out, "preview.png"), preview.contact_sheet(recs))
        yield doc
