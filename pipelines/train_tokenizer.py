"""Stage 1b: the SentencePiece tokenizer, with LocCa's location tokens.

Train one on the shards' text:
  python pipelines/train_tokenizer.py --input 'DIR/*.array_record' --output tok.model --vocab_size 32000
Or take an existing model (e.g. the C4 32k English one) and add what it lacks:
  python pipelines/train_tokenizer.py --base_model c4_en.model --output tok.model
Both write tok.model and tok.model.json (the id layout: pad 0, eos, bos, mask, loc_start).

The training text is what the decoder will read: captions, "{phrase} :" (the ARef form, so the
separator becomes a piece) and one "cap aref gcap" line per record (so task prefixes get pieces).
Imports only sentencepiece, array_record, pipelines.record, pipelines.shards and model.tokenizer:
no JAX, no Beam.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

if __package__ in (None, ""):  # Run as a script: make the repository importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import tokenizer as tokenizer_lib  # noqa: E402
from pipelines import record as record_lib  # noqa: E402
from pipelines import shards  # noqa: E402

TASK_LINE = "cap aref gcap"


def shard_paths(pattern: str) -> list[str]:
    """--input's shards (pipelines/shards.py: local or gs://, comma-separated globs)."""
    try:
        return shards.expand(pattern)
    except shards.NoShards as e:
        raise SystemExit(f"train_tokenizer: {e} (--input); check the glob") from None


def read_texts(paths: Sequence[str], max_records: int | None = None) -> Iterator[str]:
    """Yields the training sentences of every record, shard by shard."""
    from array_record.python.array_record_module import ArrayRecordReader

    from training import shard_cache  # gs:// shards: read from a local copy, as the trainer does

    seen = 0
    for path in shard_cache.stage(paths):
        reader = ArrayRecordReader(path)
        try:
            for i in range(reader.num_records()):
                if max_records is not None and seen >= max_records:
                    return
                rec = record_lib.decode(reader.read([i])[0], check=False)
                seen += 1
                if rec.caption.strip():
                    yield rec.caption
                for phrase in rec.phrases:
                    yield f"{phrase} :"
                yield TASK_LINE
        finally:
            reader.close()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # One line, no usage dump.
        raise SystemExit(f"train_tokenizer: {message} (see --help)")


def main(argv: Sequence[str] | None = None) -> None:
    p = _Parser(description=__doc__.splitlines()[0])
    p.add_argument("--input", help="glob of ArrayRecord shards (train a new model)")
    p.add_argument("--base_model", help="existing SentencePiece .model to extend instead")
    p.add_argument("--output", required=True, help="where to write the .model (+ .model.json)")
    p.add_argument("--vocab_size", type=int, default=32_000,
                   help="total pieces incl. the --num_loc location pieces + 256 bytes + 5 specials")
    p.add_argument("--num_loc", type=int, default=tokenizer_lib.NUM_LOC,
                   help="location bins: <loc0000>..<locN-1> (1024 for paper-scale models; the "
                        "trainer and evaluator read it from the tokenizer)")
    p.add_argument("--model_type", default="unigram", choices=["unigram", "bpe"])
    p.add_argument("--max_records", type=int, default=None, help="read at most this many records")
    p.add_argument("--character_coverage", type=float, default=0.9995)
    args = p.parse_args(argv)
    if not 2 <= args.num_loc <= tokenizer_lib.MAX_LOC:
        raise SystemExit(f"train_tokenizer: --num_loc must be in [2, {tokenizer_lib.MAX_LOC}], "
                         f"got {args.num_loc}")

    if (args.input is None) == (args.base_model is None):
        raise SystemExit("train_tokenizer: give exactly one of --input (train) or --base_model")
    if args.base_model is not None:
        if not Path(args.base_model).exists() and "://" not in args.base_model:
            raise SystemExit(f"train_tokenizer: --base_model {args.base_model} does not exist")
        from etils import epath

        try:
            model = tokenizer_lib.add_special_pieces(epath.Path(args.base_model).read_bytes(),
                                                     num_loc=args.num_loc)
        except Exception as e:  # noqa: BLE001 - a broken model file: say so in one line.
            raise SystemExit(f"train_tokenizer: cannot extend {args.base_model}: {e}") from None
    else:
        floor = args.num_loc + 256 + 5 + 1
        if args.vocab_size < floor:
            raise SystemExit(
                f"train_tokenizer: --vocab_size {args.vocab_size} is too small: {args.num_loc} "
                f"location, 256 byte and 5 special pieces come first; use at least {floor + 14}"
            )
        texts = read_texts(shard_paths(args.input), args.max_records)
        try:
            model = tokenizer_lib.train_model(
                texts, args.vocab_size, model_type=args.model_type, num_loc=args.num_loc,
                character_coverage=args.character_coverage,
            )
        except RuntimeError as e:  # SentencePiece's own message, e.g. an empty corpus.
            raise SystemExit(f"train_tokenizer: SentencePiece failed: {e}") from None
    tok = tokenizer_lib.save(model, args.output)
    print(
        f"wrote {args.output} (+ .json): vocab {tok.vocab_size}, pad {tok.pad_id}, eos {tok.eos_id},"
        f" bos {tok.bos_id}, mask {tok.mask_id}, {tok.num_loc} location bins "
        f"{tok.loc_start}..{tok.loc_start + tok.num_loc - 1}"
    )


if __name__ == "__main__":
    main()
