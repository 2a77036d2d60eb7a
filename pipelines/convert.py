"""Convert a local grounded dataset into webdataset tars the annotate stage reads unchanged.

  python pipelines/convert.py --format coco --images COCO/val2017 \
      --instances COCO/annotations/instances_val2017.json \
      --captions COCO/annotations/captions_val2017.json --output DATA/coco-web
  python pipelines/convert.py --format vg --images VG --image_data VG/image_data.json \
      --regions VG/region_descriptions.json --output DATA/vg-web
  python pipelines/annotate.py --input 'DATA/coco-web/*.tar' --output SHARDS --labeler reference

Writes OUTPUT/shard-XXXXX.tar (img2dataset's layout, ground truth in each sample's JSON as
`regions`; pipelines/converters/output.py), OUTPUT/convert.json (counts that add up: read =
written + dead-lettered, regions kept and dropped by reason) and OUTPUT/dead_letters.jsonl.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/convert.py`: make the repo root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.converters.output import SampleWriter  # noqa: E402

FORMATS = ("coco", "vg")
_NEEDS = {"coco": ("instances", "captions"), "vg": ("image_data", "regions")}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python pipelines/convert.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--images", required=True, help="image directory")
    p.add_argument("--output", required=True, help="output directory for the tars")
    p.add_argument("--instances", help="coco: instances_*.json")
    p.add_argument("--captions", help="coco: captions_*.json")
    p.add_argument("--image_data", help="vg: image_data.json")
    p.add_argument("--regions", help="vg: region_descriptions.json (streamed)")
    p.add_argument("--shard_size", type=int, default=1000, help="samples per tar")
    p.add_argument("--caption_regions", type=int, default=8,
                   help="vg: phrases of this many largest regions make the alt-text")
    return p


def check(args: argparse.Namespace) -> None:
    """Every flag the format needs is given and names an existing file: one line otherwise."""
    if args.shard_size < 1 or args.caption_regions < 1:
        raise SystemExit("convert: --shard_size and --caption_regions must be >= 1")
    if not Path(args.images).is_dir():
        raise SystemExit(f"convert: --images {args.images} is not a directory; point it at the "
                         "image folder")
    for name in _NEEDS[args.format]:
        value = getattr(args, name)
        if not value:
            raise SystemExit(f"convert: --format {args.format} needs --{name} FILE")
        if not Path(value).is_file():
            raise SystemExit(f"convert: --{name} {value} not found; check the path")


def run(argv: list[str] | None = None) -> dict:
    """Parses flags, converts, returns the report (also in OUTPUT/convert.json)."""
    args = _parser().parse_args(argv)
    check(args)
    writer = SampleWriter(args.output, args.shard_size, args.format)
    images = Path(args.images)
    from pipelines.converters import stream_json

    try:
        if args.format == "coco":
            from pipelines.converters import coco

            coco.convert(images, Path(args.instances), Path(args.captions), writer)
        else:
            from pipelines.converters import visual_genome

            visual_genome.convert(images, Path(args.image_data), Path(args.regions), writer,
                                  args.caption_regions)
    except (ValueError, stream_json.JsonStreamError) as e:  # json.JSONDecodeError is a ValueError
        raise SystemExit(f"convert: cannot read the {args.format} annotations ({e}); "
                         "check that the files are the dataset's JSON") from None
    report = writer.close({k: v for k, v in sorted(vars(args).items())})
    c = report["counts"]
    print(f"convert: read {c['read']} images, wrote {c['written']} samples in "
          f"{len(report['shards'])} shards, dead-lettered {c['dead_lettered']}; "
          f"{report['regions']['written']} regions ({report['regions']['dropped']} dropped) "
          f"-> {args.output}", file=sys.stderr)
    return report


if __name__ == "__main__":
    run()
