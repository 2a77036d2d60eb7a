"""Exports a trained run's encoder for others to use, each format with its model card:

    python evaluation/export.py --workdir W [--step N] --output OUT [--license apache-2.0]

    OUT/big_vision/encoder.npz + README.md          big_vision ViT names (as WORKDIR/encoder.npz)
    OUT/transformers/config.json, model.safetensors, preprocessor_config.json + README.md
                                                    a transformers SiglipVisionModel

Both formats are written from one gather of the encoder (vit_weights.encoder_arrays), both
load back with `--config.init.encoder_npz=PATH` (training) or `encoder=PATH` (the frozen-encoder
evaluators), and the card (evaluation/model_card.py) states the config, data counts and
results at the exported step.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python evaluation/export.py` from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation import model_card  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Export a LocCa run's encoder with model cards.")
    p.add_argument("--workdir", required=True, help="training workdir (config.json, checkpoints/)")
    p.add_argument("--step", type=int, help="checkpoint step (default: the latest complete one)")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--formats", default=",".join(model_card.FORMATS),
                   help=f"comma-separated subset of {model_card.FORMATS}")
    p.add_argument("--license", default="other",
                   help="the card's license id (the weights also carry the data's terms)")
    return p.parse_args(argv)


def export(workdir: str, output: str, *, step: int | None = None,
           formats: tuple[str, ...] = model_card.FORMATS, license_id: str = "other"
           ) -> dict[str, Path]:
    """Writes each format's files and README.md under OUTPUT/<format>/; returns their dirs."""
    from evaluation import watch
    from evaluation.train_run import TrainRun
    from model import hf_siglip, vit_weights

    unknown = sorted(set(formats) - set(model_card.FORMATS))
    if unknown:
        raise ValueError(f"unknown --formats {unknown}: use a subset of {model_card.FORMATS}")
    run = TrainRun.load(workdir)
    step = watch.resolve_step(workdir, step)
    flat = vit_weights.encoder_arrays(run.restore_params(watch.step_path(workdir, step)))
    facts = model_card.gather(workdir, step)
    out = {}
    for fmt in formats:
        target = Path(output) / fmt
        if fmt == "transformers":
            hf_siglip.write(flat, run.model_config, str(target))
        else:
            vit_weights.write_npz(flat, str(target / "encoder.npz"))
        (target / "README.md").write_text(model_card.render(facts, fmt, license_id, output))
        out[fmt] = target
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    try:
        dirs = export(os.path.abspath(args.workdir), args.output, step=args.step,
                      formats=formats, license_id=args.license)
    except (FileNotFoundError, ValueError) as e:  # hf_siglip.ExportError is a ValueError
        raise SystemExit(f"error: {e}") from None
    for fmt, path in dirs.items():
        print(f"[export] {fmt}: {path} (model card {path / 'README.md'})", flush=True)


if __name__ == "__main__":
    main()
