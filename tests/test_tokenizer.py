"""Tokenizer: id layout, location pieces, extending an existing model, the CLI."""

from __future__ import annotations

import io
import json
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from array_record.python.array_record_module import ArrayRecordWriter

from model import tokenizer as tokenizer_lib
from pipelines import record as record_lib

REPO = Path(__file__).resolve().parents[1]
WORDS = "a dog cat red blue green car on the left right of with man woman table big small".split()


def _sentences(n: int = 1500, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10))) for _ in range(n)]


@pytest.fixture(scope="module")
def tok() -> tokenizer_lib.Tokenizer:
    return tokenizer_lib.Tokenizer(tokenizer_lib.train_model(_sentences(), 1500))


def test_layout_of_trained_model(tok):
    assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2)
    assert tok.id_to_piece(tok.mask_id) == "<mask>"
    for i in (0, 1, 511, 1023):
        assert tok.id_to_piece(tok.loc_start + i) == f"<loc{i:04d}>"
    assert tok.vocab_size > 1024 + 256 + 5  # some word pieces were learned
    assert len({tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id, tok.mask_id, tok.loc_start}) == 6


def test_location_pieces_are_single_tokens(tok):
    ids = tok.encode("dog<loc0000><loc0512><loc1023><loc0007>")
    assert ids[-4:] == [tok.loc_start, tok.loc_start + 512, tok.loc_start + 1023, tok.loc_start + 7]
    # The trap the task formatting avoids: a space before a location piece costs a lone "▁".
    spaced = tok.encode("dog <loc0000>")
    assert tok.id_to_piece(spaced[-2]) == "▁" and spaced[-1] == tok.loc_start


def test_encode_decode_round_trip(tok):
    for text in ["a red dog on the left", "zebra ünïcode 日本 123", "<loc0001><loc0002> : dog"]:
        assert tok.decode(tok.encode(text)) == text


def test_decode_stops_at_eos_and_drops_pad_bos_mask(tok):
    ids = [tok.bos_id, *tok.encode("a dog"), tok.mask_id, tok.pad_id, tok.eos_id,
           *tok.encode("cat")]
    assert tok.decode(ids) == "a dog"
    assert tok.encode("<mask>") != [tok.mask_id]  # control piece: text never produces it


def test_pickle_round_trip(tok):
    tok2 = pickle.loads(pickle.dumps(tok))
    assert tok2.encode("the big red car") == tok.encode("the big red car")
    assert tok2.mask_id == tok.mask_id


def _base_model(**ids) -> bytes:
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_sentences(500)), model_writer=out, vocab_size=30, minloglevel=2,
        **ids,
    )
    return out.getvalue()


@pytest.mark.parametrize(
    "ids",
    [
        dict(pad_id=0, eos_id=1, unk_id=2, bos_id=-1),  # T5 / C4 layout: no BOS
        dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1),  # Llama layout: no pad
    ],
)
def test_existing_model_gets_missing_pieces(ids):
    base_bytes = _base_model(**ids)
    with pytest.raises(ValueError):
        tokenizer_lib.layout_of(base_bytes)  # unusable as is
    tok = tokenizer_lib.Tokenizer(tokenizer_lib.add_special_pieces(base_bytes))
    assert tok.pad_id == 0 and tok.bos_id >= 0 and tok.eos_id >= 0
    assert tok.id_to_piece(tok.loc_start + 1023) == "<loc1023>"
    base = spm.SentencePieceProcessor(model_proto=base_bytes)
    text = "a red dog on the left"
    # The same segmentation: only ids shift (by one, when pad had to be inserted at 0).
    assert [base.id_to_piece(i) for i in base.encode(text)] == [
        tok.id_to_piece(i) for i in tok.encode(text)
    ]
    # Idempotent: a model that has everything comes back unchanged in layout.
    again = tokenizer_lib.add_special_pieces(tok.model_bytes)
    assert tokenizer_lib.layout_of(again)["loc_start"] == tok.loc_start


def test_save_load_and_layout_mismatch(tmp_path, tok):
    path = str(tmp_path / "tok.model")
    tokenizer_lib.save(tok.model_bytes, path)
    layout = json.loads(Path(path + ".json").read_text())
    assert layout["loc_start"] == tok.loc_start and layout["pad_id"] == 0
    loaded = tokenizer_lib.Tokenizer.load(path)
    assert loaded.encode("a dog") == tok.encode("a dog")
    layout["loc_start"] += 1
    Path(path + ".json").write_text(json.dumps(layout))
    with pytest.raises(ValueError, match="does not match"):
        tokenizer_lib.Tokenizer.load(path)
    with pytest.raises(FileNotFoundError, match="train_tokenizer"):
        tokenizer_lib.Tokenizer.load(str(tmp_path / "missing.model"))


def _write_shard(path: Path, captions: list[str], phrases: list[str]) -> None:
    writer = ArrayRecordWriter(str(path), "group_size:1")
    for i, (caption, phrase) in enumerate(zip(captions, phrases, strict=True)):
        rec = record_lib.Record(
            key=f"k{i}", source="test", image=b"\xff\xd8not-decoded-here", height=4, width=4,
            caption=caption, boxes=np.asarray([[0.1, 0.1, 0.5, 0.5]], np.float32),
            phrases=(phrase,), scores=np.ones(1, np.float32), query_ranks=np.zeros(1, np.int64),
            labeler="test",
        )
        writer.write(record_lib.encode(rec))
    writer.close()


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "train_tokenizer.py"), *args],
        capture_output=True, text=True, timeout=120,
    )


def test_cli_trains_from_shards(tmp_path):
    sents = _sentences(300)
    _write_shard(tmp_path / "a.array_record", sents[:150], [s.split()[0] for s in sents[:150]])
    _write_shard(tmp_path / "b.array_record", sents[150:], ["zebra crossing"] * 150)
    out = tmp_path / "tok.model"
    res = _run_cli("--input", str(tmp_path / "*.array_record"), "--output", str(out),
                   "--vocab_size", "1400", "--model_type", "bpe")
    assert res.returncode == 0, res.stderr
    tok = tokenizer_lib.Tokenizer.load(str(out))
    # Phrases from the second shard were in the training text: "zebra" is a learned piece.
    assert [tok.id_to_piece(i) for i in tok.encode("zebra :")] == ["▁zebra", "▁:"]
    assert Path(str(out) + ".json").exists()
    # Without JAX or Beam: the stage-1b image does not carry them.
    script = REPO / "pipelines" / "train_tokenizer.py"
    code = (
        f"import sys, runpy; sys.argv = ['x', '--help']; sys.path.insert(0, {str(REPO)!r})\n"
        f"try: runpy.run_path({str(script)!r}, run_name='__main__')\nexcept SystemExit: pass\n"
        "bad = [m for m in ('jax', 'apache_beam', 'tensorflow', 'grain') if m in sys.modules]\n"
        "print('HEAVY', bad)"
    )
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in probe.stdout, probe.stdout + probe.stderr


def test_cli_extends_base_model(tmp_path):
    base = tmp_path / "base.model"
    base.write_bytes(_base_model(pad_id=0, eos_id=1, unk_id=2, bos_id=-1))
    out = tmp_path / "ext.model"
    res = _run_cli("--base_model", str(base), "--output", str(out))
    assert res.returncode == 0, res.stderr
    assert tokenizer_lib.Tokenizer.load(str(out)).id_to_piece(
        tokenizer_lib.Tokenizer.load(str(out)).loc_start) == "<loc0000>"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input", "/nonexistent/*.array_record", "--output", "x.model"], "no shards match"),
        (["--output", "x.model"], "exactly one of --input"),
        (["--input", "a", "--output", "x.model", "--vocab_size", "500"], "too small"),
        (["--input", "a", "--output", "x.model", "--vocab_size", "290", "--num_loc", "32"],
         "32 location, 256 byte"),
        (["--input", "a", "--output", "x.model", "--num_loc", "1"], "--num_loc must be in"),
        (["--base_model", "/nonexistent.model", "--output", "x.model"], "does not exist"),
        (["--bogus"], "see --help"),
    ],
)
def test_cli_errors_are_one_line(args, message):
    res = _run_cli(*args)
    assert res.returncode != 0
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
