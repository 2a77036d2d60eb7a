"""SentencePiece tokenizer with LocCa's special pieces and location tokens.

Id layout (fixed once, here, for every model this project uses):
  pad  `<pad>`  id 0 (CONTROL)      the decoder masks pad keys and the loss ignores them
  eos  `</s>`   (CONTROL)           ends every target
  bos  `<s>`    (CONTROL)           starts every sequence
  unk  `<unk>`  (UNKNOWN)
  mask `<mask>` (CONTROL)           CapPa parallel-prediction input; never produced by `encode`
  `<loc0000>`..`<locN-1>` (USER_DEFINED, contiguous from `loc_start`): N = `num_loc` box-coordinate
                                    bins, one setting end to end (NUM_LOC = 1024 for paper-scale
                                    models, fewer for a small model at low resolution)
A model trained here gets exactly these; an existing model (e.g. the C4 32k English model) gets the
missing ones appended by editing its ModelProto (`add_special_pieces`), pad moved to id 0 if needed.
The resulting layout is written as JSON next to the model (`<model>.json`) and checked on load, so a
model and its layout file cannot silently drift apart.

Deliberately free of JAX/Beam: pipelines/train_tokenizer.py imports this in any stage's image.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

NUM_LOC = 1024  # the default bin count (PaliGemma's, the paper-scale configs')
MAX_LOC = 10_000  # the piece names have four digits
PAD, EOS, BOS, UNK, MASK = "<pad>", "</s>", "<s>", "<unk>", "<mask>"
_LOC_NAME = re.compile(r"<loc(\d{4})>")


def loc_pieces(num_loc: int = NUM_LOC) -> tuple[str, ...]:
    """The location pieces `<loc0000>`..`<loc{num_loc-1:04d}>`."""
    if not 2 <= num_loc <= MAX_LOC:
        raise ValueError(f"num_loc must be in [2, {MAX_LOC}], got {num_loc}")
    return tuple(f"<loc{i:04d}>" for i in range(num_loc))
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4  # sentencepiece ModelProto.SentencePiece.Type


def _model_proto_class():
    """Returns sentencepiece's ModelProto class.

    sentencepiece 0.2.x ships gencode for protobuf 7, and Beam pins protobuf < 7, so importing its
    `sentencepiece_model_pb2` raises VersionError. The serialized descriptor inside that file is
    version-independent, so on that error we read it out of the source and build the class in a
    private pool (same wire format, no global pool clash).
    """
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb2

        return pb2.ModelProto
    except Exception:  # noqa: BLE001 - protobuf raises VersionError (not exported stably)
        pass
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    src = (Path(spm.__file__).parent / "sentencepiece_model_pb2.py").read_text()
    for node in ast.walk(ast.parse(src)):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", "") == "AddSerializedFile"
            and node.args
        ):
            fd = descriptor_pb2.FileDescriptorProto.FromString(ast.literal_eval(node.args[0]))
            pool = descriptor_pool.DescriptorPool()
            pool.Add(fd)
            return message_factory.GetMessageClass(
                pool.FindMessageTypeByName("sentencepiece.ModelProto")
            )
    raise RuntimeError("cannot find the ModelProto descriptor in sentencepiece_model_pb2.py")


ModelProto = _model_proto_class()


def train_model(
    sentences: Iterable[str],
    vocab_size: int,
    *,
    model_type: str = "unigram",
    num_loc: int = NUM_LOC,
    character_coverage: float = 0.9995,
    input_sentence_size: int = 2_000_000,
    num_threads: int = 2,
) -> bytes:
    """Trains a SentencePiece model with this project's id layout; returns the serialized model.

    `vocab_size` counts everything: 5 specials + `num_loc` location pieces + 256 bytes + word
    pieces. It is a soft limit (a tiny corpus yields fewer pieces rather than an error).
    """
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=out,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True,
        byte_fallback=True,
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece=PAD,
        eos_piece=EOS,
        bos_piece=BOS,
        unk_piece=UNK,
        control_symbols=[MASK],
        user_defined_symbols=list(loc_pieces(num_loc)),
        num_threads=num_threads,
        minloglevel=2,
    )
    # A no-op check that the layout came out right.
    return add_special_pieces(out.getvalue(), num_loc=num_loc)


def add_special_pieces(model_bytes: bytes, num_loc: int = NUM_LOC) -> bytes:
    """Adds whatever of pad/bos/eos/mask/location pieces a model lacks; returns the new model.

    A model that already has location pieces keeps them; it must have exactly `num_loc`.

    Pad is moved (or inserted) at id 0, which shifts every other id by one when it was elsewhere:
    fine for a model trained from scratch, which is the only use here.
    """
    proto = ModelProto.FromString(model_bytes)
    spec = proto.trainer_spec
    names = [p.piece for p in proto.pieces]
    changed = False

    if not names or names[0] != spec.pad_piece or proto.pieces[0].type != _CONTROL:
        pad_name = spec.pad_piece or PAD
        kept = [p for p in proto.pieces if p.piece != pad_name]
        del proto.pieces[:]
        proto.pieces.add(piece=pad_name, score=0.0, type=_CONTROL)
        proto.pieces.extend(kept)
        spec.pad_piece, changed = pad_name, True
    names = [p.piece for p in proto.pieces]
    if UNK not in names and not any(p.type == _UNKNOWN for p in proto.pieces):
        raise ValueError("the SentencePiece model has no <unk> piece; it cannot be used")
    for field, default in (("bos_piece", BOS), ("eos_piece", EOS)):
        name = getattr(spec, field) or default
        if name not in names:
            proto.pieces.add(piece=name, score=0.0, type=_CONTROL)
            names.append(name)
            changed = True
        setattr(spec, field, name)
    if MASK not in names:
        proto.pieces.add(piece=MASK, score=0.0, type=_CONTROL)
        names.append(MASK)
        changed = True
    present = [n for n in names if _LOC_NAME.fullmatch(n)]
    if not present:
        for name in loc_pieces(num_loc):
            proto.pieces.add(piece=name, score=0.0, type=_USER_DEFINED)
        changed = True
    elif present != list(loc_pieces(num_loc)):
        raise ValueError(f"the model has {len(present)} <locNNNN> pieces, not the {num_loc} asked "
                         f"for (<loc0000>..<loc{num_loc - 1:04d}>)")
    # SentencePiece's ids are derived from these fields, which must be -1 for absent pieces.
    index = {p.piece: i for i, p in enumerate(proto.pieces)}
    spec.pad_id, spec.bos_id = index[spec.pad_piece], index[spec.bos_piece]
    spec.eos_id = index[spec.eos_piece]
    spec.unk_id = next(i for i, p in enumerate(proto.pieces) if p.type == _UNKNOWN)
    if changed:
        spec.vocab_size = len(proto.pieces)
    out = proto.SerializeToString()
    layout_of(out)  # Raises if the result is not a consistent layout.
    return out


def layout_of(model_bytes: bytes) -> dict[str, Any]:
    """The id layout of a serialized model (what goes into `<model>.json`)."""
    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    # The bin count is the number of location pieces the model holds: <loc0000> upwards.
    num_loc = 0
    while num_loc < MAX_LOC and not sp.is_unknown(sp.piece_to_id(f"<loc{num_loc:04d}>")):
        num_loc += 1
    if num_loc < 2:
        raise ValueError("the model has no <locNNNN> location pieces")
    loc = [sp.piece_to_id(n) for n in loc_pieces(num_loc)]
    layout = {
        "vocab_size": sp.get_piece_size(),
        "pad_id": sp.pad_id(),
        "eos_id": sp.eos_id(),
        "bos_id": sp.bos_id(),
        "unk_id": sp.unk_id(),
        "mask_id": sp.piece_to_id(MASK),
        "loc_start": loc[0],
        "num_loc": num_loc,
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
    }
    if layout["pad_id"] != 0:
        raise ValueError(f"pad must be id 0, the model has it at {layout['pad_id']}")
    for key in ("eos_id", "bos_id", "unk_id"):
        if layout[key] < 0:
            raise ValueError(f"the model has no {key[:-3]} piece")
    if sp.id_to_piece(layout["mask_id"]) != MASK or not sp.is_control(layout["mask_id"]):
        raise ValueError(f"the model has no control piece {MASK}")
    if loc != list(range(loc[0], loc[0] + num_loc)):
        raise ValueError("the <locNNNN> pieces are missing or not contiguous")
    return layout


def _layout_path(path: str):
    from etils import epath  # Only for reading/writing; keeps the module importable without it.

    return epath.Path(f"{path}.json")


def save(model_bytes: bytes, path: str) -> Tokenizer:
    """Writes `path` (the .model) and `path + ".json"` (its id layout); returns the Tokenizer."""
    from etils import epath

    layout = layout_of(model_bytes)
    out = epath.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(model_bytes)
    _layout_path(path).write_text(json.dumps(layout, indent=1, sort_keys=True) + "\n")
    return Tokenizer(model_bytes)


class Tokenizer:
    """A SentencePiece model plus the ids LocCa needs. Picklable (Grain workers get a copy)."""

    def __init__(self, model_bytes: bytes):
        self._model_bytes = model_bytes
        self._sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        layout = layout_of(model_bytes)
        self.vocab_size: int = layout["vocab_size"]
        self.pad_id: int = layout["pad_id"]
        self.eos_id: int = layout["eos_id"]
        self.bos_id: int = layout["bos_id"]
        self.unk_id: int = layout["unk_id"]
        self.mask_id: int = layout["mask_id"]
        self.loc_start: int = layout["loc_start"]
        self.num_loc: int = layout["num_loc"]
        self._special = {self.pad_id, self.bos_id, self.mask_id}

    @classmethod
    def load(cls, path: str) -> Tokenizer:
        """Loads a `.model` (local or cloud path) and checks it against its `.json` layout, if any."""
        from etils import epath

        p = epath.Path(path)
        if not p.exists():
            raise FileNotFoundError(
                f"tokenizer model {path} not found; train one with pipelines/train_tokenizer.py"
            )
        model_bytes = p.read_bytes()
        try:
            layout = layout_of(model_bytes)
        except ValueError as e:
            raise ValueError(
                f"{path}: {e}. Add LocCa's pieces with "
                f"`python pipelines/train_tokenizer.py --base_model {path} --output NEW.model`"
            ) from None
        lp = _layout_path(path)
        if lp.exists():
            recorded = json.loads(lp.read_text())
            if recorded != layout:
                diff = sorted(k for k in set(recorded) | set(layout) if recorded.get(k) != layout.get(k))
                raise ValueError(f"{lp} does not match {path} (differs in {diff}); rewrite both")
        return cls(model_bytes)

    def __getstate__(self) -> dict[str, bytes]:
        return {"model_bytes": self._model_bytes}

    def __setstate__(self, state: dict[str, bytes]) -> None:
        self.__init__(state["model_bytes"])

    @property
    def model_bytes(self) -> bytes:
        return self._model_bytes

    def encode(self, text: str) -> list[int]:
        """Text -> ids, without BOS/EOS. `<locNNNN>` in the text becomes its single location id."""
        return self._sp.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text; stops at the first EOS and drops pad, BOS and mask."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i not in self._special and 0 <= i < self.vocab_size:
                out.append(i)
        return self._sp.decode(out)

    def is_loc(self, token_id: int) -> bool:
        return self.loc_start <= int(token_id) < self.loc_start + self.num_loc

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))
