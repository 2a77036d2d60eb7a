"""Stage 1, annotate: web image-text data -> pseudo-labelled ArrayRecord shards (Apache Beam).

Local run (DirectRunner):

  python pipelines/annotate.py --input 'DATA/web/*.tar' --output SHARDS --labeler reference

Dataflow (workers get this code and its dependencies from the annotate container image built from
infra/annotate/; `--setup_file ./setup.py` works too for CPU-only workers):

  python pipelines/annotate.py --input 'gs://BUCKET/web/*.tar' --output gs://BUCKET/shards \
    --labeler owlvit --owlvit_checkpoint gs://BUCKET/owlv2-b16 --num_shards 1024 \
    --runner DataflowRunner --project PROJECT --region REGION \
    --temp_location gs://BUCKET/tmp --sdk_container_image REGION-docker.pkg.dev/PROJECT/locca/annotate \
    --experiments use_runner_v2 --machine_type g2-standard-8 \
    --dataflow_service_options 'worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver' \
    --number_of_worker_harness_threads 1 --max_batch_size 32

(one harness thread per GPU worker keeps one model copy per device; set
XLA_PYTHON_CLIENT_PREALLOCATE=false in the image if several SDK processes share a GPU). Dask:
`--runner apache_beam.runners.dask.dask_runner.DaskRunner --dask_client_address HOST:8786
--dask_npartitions N` (build() says what that runner gets wrong). Flink/Spark:
`--runner PortableRunner --job_endpoint HOST:8099 --environment_type DOCKER
--environment_config IMAGE` (or FlinkRunner/SparkRunner with `--flink_master` / `--spark_master_url`).

Outputs in --output: `{split}-{i:05d}-of-{n:05d}.array_record`, `manifest.json`,
`dead_letters.jsonl`, `preview.html`, `preview.png`. See the module docstrings of sources, decode,
queries, postprocess and shard_sink for each step's rules. Labelers: `reference` (ground-truth
regions in each sample's JSON, e.g. from pipelines/convert.py), `grit` (GRIT's noun_chunks /
ref_exps, `--grit_spans`), `owlvit` (pseudo-labels). Empty alt-texts are dead-lettered as
`empty_caption` unless --keep_empty_captions (a Cap example needs a caption); non-UTF-8 alt-texts as `caption_not_utf8`.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/annotate.py`: make the repo root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import apache_beam as beam  # noqa: E402
from apache_beam.io.filesystems import FileSystems  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions  # noqa: E402

from pipelines import finalize, stages, tags  # noqa: E402
from pipelines import manifest as manifest_lib  # noqa: E402
from pipelines.decode import DecodeConfig  # noqa: E402
from pipelines.postprocess import PostprocessConfig  # noqa: E402
from pipelines.sources import FORMATS, SourceConfig  # noqa: E402

# RunInference and the model handler are imported inside build(): Beam's RunInference imports torch
# when it is installed (seconds), which flag and path errors should not wait for.
LABELERS = ("reference", "owlvit", "grit")
LOCAL_RUNNERS = ("directrunner", "fnapirunner", "bundlebaseddirectrunner", "switchingdirectrunner",
                 "prismrunner", "testdirectrunner")


class AnnotateOptions(PipelineOptions):
    """The annotate stage's flags (Beam's own flags - runner, project, ... - come on top)."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        a = parser.add_argument
        a("--input", required=True, help="glob of input files, local or any Beam filesystem")
        a("--output", required=True, help="output directory, local or any Beam filesystem")
        a("--input_format", default="webdataset", choices=FORMATS)
        a("--image_key", default=None, help="parquet column / Example feature with image bytes")
        a("--text_key", default=None, help="parquet column / Example feature with the alt-text")
        a("--json_key", default=None, help="parquet column / Example feature with JSON metadata")
        a("--labeler", default="reference", choices=LABELERS)
        a("--owlvit_checkpoint", default=None, help="OWL-ViT checkpoint path or hub id")
        a("--grit_spans", default="noun_chunks", choices=("noun_chunks", "ref_exps", "both"),
          help="--labeler grit: which GRIT span lists become regions")
        a("--num_shards", type=int, default=0, help="0: one output shard per input file")
        a("--split", default="train")
        a("--score_threshold", type=float, default=0.3)
        a("--nms_iou", type=float, default=0.5, help="1.0 disables NMS")
        a("--max_boxes", type=int, default=16)
        a("--min_box_size", type=float, default=0.01, help="smallest box side, normalized")
        a("--require_boxes", action="store_true", help="drop images with no kept box")
        a("--max_ngram", type=int, default=10)
        a("--max_queries", type=int, default=300)
        a("--max_words", type=int, default=256, help="alt-text words read for queries")
        a("--keep_empty_captions", action="store_true")
        a("--max_caption_chars", type=int, default=2000)
        a("--max_pixels", type=int, default=64_000_000, help="decompression-bomb cap (w*h)")
        a("--min_image_side", type=int, default=8)
        a("--store_max_side", type=int, default=0, help="resize stored images; 0 keeps size")
        a("--detect_max_side", type=int, default=1024, help="longest side given to the labeler")
        a("--jpeg_quality", type=int, default=90)
        a("--max_batch_size", type=int, default=16,
          help="samples per labeler batch (cut from one input file at a time)")
        a("--preview_size", type=int, default=24, help="annotated images in preview.html")
        a("--progress", type=lambda s: s.lower() in ("1", "true", "yes"), default=None,
          help="progress lines on stderr (default: on for local runners)")


def _fail(message: str) -> SystemExit:
    return SystemExit(f"annotate: {message}")


def check_runner(options: PipelineOptions, opts: AnnotateOptions) -> None:
    """Flags a service runner (Dataflow) needs, checked before anything is read or written.

    Dataflow's workers cannot see this machine's disk, and the service needs a project, a
    region and a gs:// temp location; Beam itself would say so only after the inputs are listed
    and the graph is built, some of it as a traceback.
    """
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    runner = runner if isinstance(runner, str) else type(runner).__name__
    if runner.lower() not in ("dataflowrunner", "testdataflowrunner"):
        return
    gcp = options.view_as(GoogleCloudOptions)
    if not gcp.project:
        raise _fail("--runner=DataflowRunner needs --project PROJECT_ID")
    if not gcp.region:
        raise _fail("--runner=DataflowRunner needs --region (e.g. --region us-central1)")
    if not (gcp.temp_location or "").startswith("gs://"):
        raise _fail("--runner=DataflowRunner needs --temp_location gs://BUCKET/tmp (got "
                    f"{gcp.temp_location or 'none'})")
    for flag, value in (("--output", opts.output), ("--input", opts.input)):
        local = [v for v in value.split(",") if not v.strip().startswith("gs://")]
        if local:
            raise _fail(f"{flag} {local[0]!r} is not on gs://: Dataflow workers cannot read or "
                        "write this machine's disk; use a gs:// path")


def check_options(opts: AnnotateOptions) -> list[str]:
    """Validates flags, input and output before any work; returns the input files."""
    if not 0.0 <= opts.score_threshold <= 1.0:
        raise _fail(f"--score_threshold {opts.score_threshold} must be in [0, 1]")
    if not 0.0 < opts.nms_iou <= 1.0:
        raise _fail(f"--nms_iou {opts.nms_iou} must be in (0, 1]; 1.0 disables NMS")
    for name in ("max_boxes", "max_ngram", "max_batch_size", "max_pixels", "max_queries",
                 "max_words", "max_caption_chars"):
        if getattr(opts, name) < 1:
            raise _fail(f"--{name} must be >= 1, got {getattr(opts, name)}")
    if not 0.0 <= opts.min_box_size <= 1.0:  # NaN fails too
        raise _fail(f"--min_box_size {opts.min_box_size} must be in [0, 1] (normalized side)")
    if opts.preview_size < 0:
        raise _fail(f"--preview_size must be >= 0 (0: an empty preview), got {opts.preview_size}")
    if opts.num_shards < 0:
        raise _fail(f"--num_shards must be >= 0 (0: one per input file), got {opts.num_shards}")
    if not 1 <= opts.jpeg_quality <= 100:
        raise _fail(f"--jpeg_quality must be in 1..100, got {opts.jpeg_quality}")
    if opts.labeler == "owlvit":
        if not opts.owlvit_checkpoint:
            raise _fail("--labeler=owlvit needs --owlvit_checkpoint PATH_OR_HUB_ID")
        try:
            import pipelines.owlvit.labeler  # noqa: F401
        except ImportError as e:
            raise _fail(f"--labeler=owlvit cannot import pipelines.owlvit.labeler ({e}); "
                        "install the [annotate] extra or use --labeler=reference") from None
    files: list[str] = []
    for pattern in opts.input.split(","):
        try:
            matched = FileSystems.match([pattern.strip()])[0].metadata_list
        except Exception as e:  # Beam raises BeamIOError for a missing local directory.
            raise _fail(f"--input {pattern!r} cannot be listed ({e}); check the path") from None
        files += sorted(m.path for m in matched if m.size_in_bytes >= 0)
    if not files:
        raise _fail(f"--input {opts.input!r} matches no files; check the path or quote the glob")
    unique = sorted(set(files))
    if len(unique) < len(files):  # overlapping patterns: each file is read once, not twice
        print(f"annotate: --input patterns overlap; reading each of the {len(unique)} files once "
              f"({len(files) - len(unique)} repeated matches ignored)", file=sys.stderr)
    files = unique
    probe = FileSystems.join(opts.output, f".write-probe-{uuid.uuid4().hex}")
    try:
        FileSystems.mkdirs(opts.output)
    except Exception:  # Already exists (local) or object stores without directories.
        pass
    try:
        with FileSystems.create(probe) as f:
            f.write(b"ok")
        FileSystems.delete([probe])
    except Exception as e:
        raise _fail(f"--output {opts.output!r} is not writable ({type(e).__name__}: {e}); "
                    "choose a directory you can write to") from None
    return files


_RUN_OPTIONS = ("runner", "project", "region", "job_name", "temp_location", "staging_location",
                "sdk_container_image", "setup_file", "requirements_file", "experiments",
                "machine_type", "worker_machine_type", "max_num_workers", "num_workers",
                "dataflow_service_options", "direct_num_workers", "direct_running_mode",
                "job_endpoint", "environment_type")


def _config_dict(options: PipelineOptions) -> dict:
    """The annotate flags (defaults included) plus the runner settings that shape the run."""
    import argparse

    parser = argparse.ArgumentParser()
    AnnotateOptions._add_argparse_args(parser)
    ours = {a.dest for a in parser._actions if a.dest != "help"}
    everything = options.get_all_options(drop_default=False)
    return {k: v for k, v in sorted(everything.items())
            if k in ours or (k in _RUN_OPTIONS and v is not None)}


def build(p: beam.Pipeline, opts: AnnotateOptions, files: list[str], config: dict) -> None:
    """Adds the whole annotate graph to `p`.

    Built from what every runner here executes alike (Beam 2.77's DaskRunner included): each step
    has one output of (tag, value) pairs, split by FlatMaps (pipelines/tags.py); labeler batches
    are cut inside a call, not in finish_bundle (stages.py); no side inputs; and every sink feeds
    the last step (Finalize), since the DaskRunner computes only what the last step needs.
    """
    from apache_beam.ml.inference.base import RunInference

    from pipelines.inference import LabelerModelHandler, LabelerSpec

    num_shards = opts.num_shards or len(files)
    runner = (p.options.view_as(StandardOptions).runner or "DirectRunner")
    runner = runner if isinstance(runner, str) else type(runner).__name__
    progress = opts.progress if opts.progress is not None else runner.lower() in LOCAL_RUNNERS

    def values(pc: beam.PCollection, tag: str, label: str) -> beam.PCollection:
        return pc | label >> beam.FlatMap(tags.values_of, tag)

    src = SourceConfig(opts.input_format, opts.image_key, opts.text_key, opts.json_key)
    read = (
        p
        | "Files" >> beam.Create(files)
        | "SpreadFiles" >> beam.Reshuffle()  # Create is one bundle: spread files over workers.
        | "Read" >> beam.ParDo(stages.ReadFileFn(src, opts.max_batch_size))
    )
    decode = DecodeConfig(max_pixels=opts.max_pixels, min_side=opts.min_image_side,
                          store_max_side=opts.store_max_side,
                          detect_max_side=opts.detect_max_side, jpeg_quality=opts.jpeg_quality)
    queries = stages.QueryConfig(opts.max_ngram, opts.max_queries, opts.max_words)
    prepared = values(read, tags.SAMPLES, "Samples") | "DecodeAndQuery" >> beam.ParDo(
        stages.PrepareFn(decode, queries, keep_empty_captions=opts.keep_empty_captions,
                         max_caption_chars=opts.max_caption_chars, progress=progress))
    handler = LabelerModelHandler(LabelerSpec(opts.labeler, opts.owlvit_checkpoint,
                                              opts.grit_spans))
    inferred = (values(prepared, tags.PREPARED, "Batches")
                | "Detect" >> RunInference(handler.with_no_batching()))
    post = PostprocessConfig(opts.score_threshold, opts.nms_iou, opts.max_boxes, opts.min_box_size)
    records = inferred | "ToRecord" >> beam.ParDo(stages.ToRecordFn(
        post, num_shards=num_shards, require_boxes=opts.require_boxes))
    shards = (values(records, tags.RECORD, "Records")
              | "GroupByShard" >> beam.GroupByKey()
              | "WriteShards" >> beam.ParDo(stages.WriteShardFn(opts.output, opts.split,
                                                                num_shards)))
    dead_written = (
        [values(pc, tags.DEAD, f"DeadOf{name}")
         for pc, name in ((read, "Read"), (prepared, "Decode"), (records, "ToRecord"))]
        | "AllDead" >> beam.Flatten()
        | "OneFile" >> beam.WithKeys(lambda _: 0)
        | "GroupDead" >> beam.GroupByKey()
        | "WriteDead" >> beam.ParDo(stages.WriteDeadLettersFn(opts.output)))
    # Each step's facts are picked out before they meet: a Flatten of the data-carrying outputs
    # themselves is not fused by the DirectRunner, which would then hold every decoded image of
    # the run in memory at once.
    facts = [pc | f"FactsOf{name}" >> beam.Filter(tags.is_fact)
             for pc, name in ((read, "Read"), (prepared, "Decode"), (records, "ToRecord"),
                              (shards, "Shards"), (dead_written, "DeadLetters"))]
    _ = (
        facts
        | "AllFacts" >> beam.Flatten()
        | "Summarize" >> beam.CombineGlobally(
            manifest_lib.ManifestFn(opts.preview_size)).without_defaults()
        | "Finalize" >> beam.ParDo(finalize.Finalize(
            {"output": opts.output, "split": opts.split, "labeler": opts.labeler},
            num_shards, config))
    )


def _reject_unknown_flags(argv: list[str]) -> None:
    """Beam silently drops flags it does not know; a misspelt threshold must not run a job."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    try:  # DaskRunner's options (--dask_client_address, ...) are defined in its own module
        import apache_beam.runners.dask.dask_runner  # noqa: F401
    except ImportError:  # no dask installed: its flags stay unknown
        pass
    parser = _BeamArgumentParser(allow_abbrev=False)
    seen: dict[str, type] = {}
    for cls in PipelineOptions.__subclasses__():
        seen.setdefault(str(cls), cls)
    for cls in seen.values():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(argv)
    flags = [a.split("=", 1)[0] for a in unknown if a.startswith("-")]
    if flags:
        raise _fail(f"unknown flag(s) {' '.join(flags)}; run with --help for the list")


def _print_help() -> None:
    """Beam's own --help lists no subclass flags: print ours, then point at Beam's."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python pipelines/annotate.py",
        description=__doc__.split("\n\n")[0],
        epilog="Beam's runner flags (--runner, --project, --region, --temp_location, "
        "--sdk_container_image, ...) are accepted too; see the module docstring for a Dataflow command.",
    )
    AnnotateOptions._add_argparse_args(parser)
    parser.print_help()
    raise SystemExit(0)


def run_with_metrics(argv: list[str] | None = None) -> tuple[dict, dict[str, int]]:
    """Like run(), also returning the `annotate*` Beam counters (name -> committed value)."""
    argv = list(argv if argv is not None else sys.argv[1:])
    if "-h" in argv or "--help" in argv:
        _print_help()
    options = PipelineOptions(argv)
    try:
        opts = options.view_as(AnnotateOptions)
        _ = opts.input, opts.output
    except SystemExit as e:  # argparse already printed its one-line error.
        raise _fail("bad flags (see the line above); run with --help for the list") from e
    _reject_unknown_flags(argv)
    check_runner(options, opts)
    files = check_options(opts)
    config = _config_dict(options) | {"input_files": len(files),
                                      "num_shards_resolved": opts.num_shards or len(files)}
    p = beam.Pipeline(options=options)
    build(p, opts, files, config)
    result = p.run()
    try:
        result.wait_until_finish()
    finally:
        if getattr(result, "client", None) is not None:  # DaskRunner: its client stays open
            result.client.close()
    if getattr(result, "job", None) is not None and options.get_all_options().get("dry_run"):
        # Dataflow's --dry_run: the job was built and validated, nothing was submitted.
        steps = len(result.job.proto_pipeline.components.transforms)
        print(f"annotate: dry run: Dataflow job built and validated ({steps} transforms, "
              f"{len(files)} input files), not submitted", file=sys.stderr)
        return {"dry_run": True, "transforms": steps, "input_files": len(files)}, {}
    metrics: dict[str, int] = {}
    try:
        counters = result.metrics().query()["counters"]
    except NotImplementedError:  # DaskRunner collects no metrics; the manifest has the counts
        counters = []
    for c in counters:
        if c.key.metric.namespace.startswith("annotate"):
            name = c.key.metric.name
            metrics[name] = metrics.get(name, 0) + int(c.committed or c.attempted or 0)
    with FileSystems.open(FileSystems.join(opts.output, "manifest.json")) as f:
        manifest = json.loads(f.read())
    c = manifest["counts"]
    print(f"annotate: read {c['read']}, wrote {c['written']} records in {len(manifest['shards'])} "
          f"shards, dead-lettered {c['dead_lettered']}, filtered {c['filtered']}, "
          f"{manifest['boxes']['total']} boxes -> {opts.output}", file=sys.stderr)
    return manifest, metrics


def run(argv: list[str] | None = None) -> dict:
    """Parses flags, checks input and output before any work, runs the pipeline.

    Returns the manifest (also written to OUTPUT/manifest.json).
    """
    return run_with_metrics(argv)[0]


if __name__ == "__main__":
    run()
