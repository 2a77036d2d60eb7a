"""Benchmark: records/s of the whole annotate pipeline (DirectRunner, `reference` labeler) against a
plain-Python loop doing the same work over the same tars, measured in the same run.

  .venv/bin/python tests/benchmarks/annotate_pipeline.py --num 2000

Prints records/s of both, their ratio, and the share of pipeline worker time per stage (from the
pipeline's `time_us/*` Beam counters: read, decode, query, detect, postprocess, write). The sample
corpus is generated once into --data (default /tmp/annotate_bench) and reused.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

STAGES = ("read", "decode", "query", "detect", "postprocess", "write")


def plain_loop(tars: list[Path], out_path: Path) -> tuple[int, dict[str, float]]:
    """The same per-image work as the pipeline, in one Python loop, one output file."""
    from array_record.python.array_record_module import ArrayRecordWriter

    from pipelines import record
    from pipelines.decode import BadInput, DecodeConfig, decode_image
    from pipelines.labelers.base import LabelerInput
    from pipelines.labelers.reference import ReferenceLabeler
    from pipelines.postprocess import PostprocessConfig, select_regions
    from pipelines.queries import queries_from_alt_text
    from pipelines.sources import RawSample, SourceConfig, read_file

    labeler, post, dec = ReferenceLabeler(), PostprocessConfig(), DecodeConfig()
    writer = ArrayRecordWriter(str(out_path), "group_size:1")
    t = dict.fromkeys(STAGES, 0.0)
    n = 0
    for path in tars:
        with open(path, "rb") as f:
            start = time.perf_counter()
            for item in read_file(str(path), f, SourceConfig("webdataset")):
                t["read"] += time.perf_counter() - start
                if not isinstance(item, RawSample):
                    continue
                s0 = time.perf_counter()
                caption = item.text.decode("utf-8").strip()
                if not caption:  # The pipeline dead-letters these as empty_caption.
                    continue
                try:
                    img = decode_image(item.image, dec)
                except BadInput:
                    continue
                s1 = time.perf_counter()
                queries = queries_from_alt_text(caption)
                s2 = time.perf_counter()
                (det,) = labeler.detect([LabelerInput(item.key, img.pixels, queries,
                                                      item.metadata)])
                s3 = time.perf_counter()
                regions = select_regions(det, queries, post)
                data = record.encode(record.Record(
                    key=item.key, source=item.source, image=img.stored, height=img.height,
                    width=img.width, caption=caption, boxes=regions.boxes, phrases=regions.phrases,
                    scores=regions.scores, query_ranks=regions.query_ranks,
                    labeler=labeler.fingerprint))
                s4 = time.perf_counter()
                writer.write(data)
                s5 = time.perf_counter()
                for k, a, b in (("decode", s0, s1), ("query", s1, s2), ("detect", s2, s3),
                                ("postprocess", s3, s4), ("write", s4, s5)):
                    t[k] += b - a
                n += 1
                start = time.perf_counter()
    writer.close()
    return n, t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num", type=int, default=2000, help="sample-corpus images")
    parser.add_argument("--data", default="/tmp/annotate_bench", help="corpus cache directory")
    parser.add_argument("--runner", default="DirectRunner")
    parser.add_argument("--extra", default="", help="extra pipeline flags, space separated")
    args = parser.parse_args()

    from pipelines import annotate, sample_corpus

    data = Path(args.data) / f"n{args.num}"
    tars = sorted((data / "web").glob("*.tar"))
    if not tars:
        print(f"generating {args.num} sample-corpus images into {data} ...", file=sys.stderr)
        sample_corpus.generate(data, num_train=args.num, num_eval=4, seed=0, shard_size=250)
        tars = sorted((data / "web").glob("*.tar"))

    work = Path(tempfile.mkdtemp(prefix="annotate-bench-"))
    try:
        start = time.perf_counter()
        n_loop, t_loop = plain_loop(tars, work / "loop.array_record")
        loop_s = time.perf_counter() - start

        start = time.perf_counter()
        manifest, metrics = annotate.run_with_metrics(
            [f"--input={data}/web/*.tar", f"--output={work}/shards", f"--runner={args.runner}",
             "--progress=false", *args.extra.split()])
        pipe_s = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n_pipe = manifest["counts"]["written"]
    assert n_pipe == n_loop, (n_pipe, n_loop)
    stage_us = {s: metrics.get(f"time_us/{s}", 0) for s in STAGES}
    total_us = max(sum(stage_us.values()), 1)
    loop_total = max(sum(t_loop.values()), 1e-9)
    print(f"images: {n_pipe} written of {manifest['counts']['read']} read, {len(tars)} tars; "
          f"dead letters {manifest['counts']['dead_lettered_by_reason']}; runner {args.runner}")
    print(f"pipeline:   {n_pipe / pipe_s:8.1f} records/s ({pipe_s:.1f} s wall, incl. start-up)")
    print(f"plain loop: {n_loop / loop_s:8.1f} records/s ({loop_s:.1f} s wall)")
    print(f"ratio pipeline / plain loop: {(n_pipe / pipe_s) / (n_loop / loop_s):.2f}")
    print("share of measured stage time (pipeline | plain loop):")
    for s in STAGES:
        print(f"  {s:12s} {100 * stage_us[s] / total_us:5.1f}% | "
              f"{100 * t_loop[s] / loop_total:5.1f}%")
    print(f"pipeline stage time covers {total_us / 1e6:.1f} s of {pipe_s:.1f} s wall; the rest is "
          "Beam start-up, shuffles, metadata side outputs and the finalize step")


if __name__ == "__main__":
    main()
