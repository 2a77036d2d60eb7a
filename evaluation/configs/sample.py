"""Evaluation of a LocCa run on the sample corpus's RefCOCO-format eval data (or real RefCOCO).

    python evaluation/run.py --workdir runs/locca_tiny \
        --config evaluation/configs/sample.py:all,data_dir=runs/corpus/eval --watch

Variants (`:name[,key=value...]`, keys: data_dir, images_dir, batch_size, max_per_split,
transfer_steps; dataset, partition, splits for `refcoco`):
  all       REC (pretrained decoder), REC transfer (frozen encoder + fresh decoder), captioning,
            grounded captioning, linear probe, image reliance, teacher-forced location readout
            (per-edge R^2 of the box tokens, evaluators/loc_readout.py).
  stats     parameter RMS / count / non-finite (no model run: a cheap health check)
  reliance  image reliance only: teacher-forced loss with each example's image vs another's
            (does the decoder read the image at all? see evaluators/image_reliance.py)
  readout   loc_readout only (how well each box edge is read, given the true earlier ones)
  rec       REC only;  transfer  transfer only;  quick  everything at toy sizes (tests, smoke runs)
  seed_check  REC and transfer as `rec_seed1` / `rec_transfer_seed1`: the demo scores its models
            on a second eval set drawn with another seed, into the same results file
  transfer_npz  transfer from WORKDIR/encoder.npz (run once with --step; compares exported
            encoders, e.g. a plain captioner's `cap_tiny` run against LocCa's)
  refcoco   the official RefCOCO-family files: REC, REC transfer (trained on the train split) and
            loc_readout on every evaluation split of `dataset` (refcoco, refcoco+, refcocog) and
            `partition` (unc, google, umd; default unc, unc, umd), read from
            {data_dir}/{dataset}/refs({partition}).p + {data_dir}/{dataset}/instances.json;
            images_dir the COCO train2014 images. `splits=val+test` picks evaluation splits
            (default: all of the partition's, evaluation/data/refcoco_variants.py), e.g.
            `:refcoco,dataset=refcocog,partition=umd,data_dir=refer/data,images_dir=coco/train2014`.
Paths may use {data_dir} and {workdir}; they are filled in by run.py.
"""

from __future__ import annotations

import ml_collections

from evaluation.data import refcoco_variants
from model.configs import parse_arg

_SPLITS = ("val", "testA", "testB")


def _data(c: ml_collections.ConfigDict, refs: str = "{data_dir}/refs.json") -> dict:
    return dict(refs=refs, instances="{data_dir}/instances.json", images="{images_dir}")


def _rec(c, refs="{data_dir}/refs.json", **kw):
    # Both location decodings: the paper's argmax and the expected bin (model/generate.py).
    kw.setdefault("loc_decodes", ("argmax", "expected"))
    kw.setdefault("splits", _SPLITS)
    return ml_collections.ConfigDict(dict(type="rec", **_data(c, refs), batch_size=c.batch_size,
                                          max_per_split=c.max_per_split, **kw))


def _transfer(c, encoder="checkpoint", refs="{data_dir}/refs.json", **kw):
    # max_len 0: fit to the longest expression (transfer_decoder.fit_max_len).
    dec = dict(width=128, depth=2, num_heads=4, mlp_dim=512, max_len=0, steps=c.transfer_steps,
               batch_size=64, learning_rate=1e-3, warmup=30, seed=0)
    kw.setdefault("splits", _SPLITS)
    return ml_collections.ConfigDict(dict(type="rec_transfer", **_data(c, refs),
                                          train_split="train", encoder=encoder,
                                          batch_size=c.batch_size, decoder=dec, **kw))


def _captioning(c):
    return ml_collections.ConfigDict(dict(type="captioning", captions="{data_dir}/captions.json",
                                          images="{images_dir}", refs="{data_dir}/refs.json",
                                          refs_split="val", split="val", beam_sizes=(1, 3),
                                          max_images=c.max_per_split, batch_size=c.batch_size))


def _gcap(c):
    return ml_collections.ConfigDict(dict(type="gcap", **_data(c), splits=("val",),
                                          max_per_split=c.max_per_split,
                                          batch_size=c.batch_size))


def _reliance(c):
    return ml_collections.ConfigDict(dict(type="image_reliance", **_data(c),
                                          captions="{data_dir}/captions.json", split="val",
                                          max_per_split=c.max_per_split,
                                          batch_size=c.batch_size))


def _probe(c):
    return ml_collections.ConfigDict(dict(type="linear_probe", instances="{data_dir}/instances.json",
                                          images="{images_dir}", refs="{data_dir}/refs.json",
                                          train_split="train",
                                          fields=("num_objects", "dominant_shape"), l2=10.0,
                                          encoder="checkpoint", batch_size=c.batch_size))


def _readout(c, refs="{data_dir}/refs.json", splits=_SPLITS):
    return ml_collections.ConfigDict(dict(type="loc_readout", **_data(c, refs), splits=splits,
                                          max_per_split=c.max_per_split,
                                          batch_size=c.batch_size))


def _refcoco(c) -> dict:
    """REC, REC transfer and loc_readout on one official RefCOCO-family variant."""
    dataset, partition = refcoco_variants.resolve(c.dataset, c.partition)
    splits = (tuple(s for s in str(c.splits).split("+") if s) if c.splits
              else refcoco_variants.eval_splits(dataset, partition))
    refs = refcoco_variants.refs_path("{data_dir}", dataset, partition)
    data = dict(refs=refs, instances=refcoco_variants.instances_path("{data_dir}", dataset),
                images="{images_dir}")
    rec = _rec(c, splits=splits)
    transfer = _transfer(c, splits=splits)  # trains on refcoco_variants.TRAIN_SPLIT
    readout = _readout(c, splits=splits)
    for ev in (rec, transfer, readout):
        ev.update(data)
    return dict(rec=rec, rec_transfer=transfer, loc_readout=readout)


def get_config(arg: str = "all") -> ml_collections.ConfigDict:
    variant, over = parse_arg(arg or "all")
    c = ml_collections.ConfigDict(dict(
        data_dir="", images_dir="{data_dir}/images", tokenizer="", batch_size=32,
        max_per_split=0, transfer_steps=300, poll_s=5, stale_claim_s=6 * 3600,
        dataset="refcoco", partition="", splits="",
    ))
    if variant == "quick":
        c.update(batch_size=8, max_per_split=16, transfer_steps=60)
    unknown = sorted(set(over) - set(c))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; known: {sorted(c)}")
    c.update(over)
    evals = {
        "all": lambda: dict(param_stats=ml_collections.ConfigDict(dict(type="param_stats")),
                            rec=_rec(c), rec_transfer=_transfer(c), captioning=_captioning(c),
                            gcap=_gcap(c), linear_probe=_probe(c), image_reliance=_reliance(c),
                            loc_readout=_readout(c)),
        "quick": lambda: dict(rec=_rec(c), rec_transfer=_transfer(c), captioning=_captioning(c),
                              gcap=_gcap(c), linear_probe=_probe(c),
                              image_reliance=_reliance(c), loc_readout=_readout(c)),
        "reliance": lambda: dict(image_reliance=_reliance(c)),
        # The demo's check that a recipe does not fit one seed: the same REC and transfer on an
        # eval set drawn with another seed, under their own names in the same results file.
        "seed_check": lambda: dict(rec_seed1=_rec(c), rec_transfer_seed1=_transfer(c)),
        "rec": lambda: dict(rec=_rec(c)),
        "readout": lambda: dict(loc_readout=_readout(c)),
        "stats": lambda: dict(param_stats=ml_collections.ConfigDict(dict(type="param_stats"))),
        "transfer": lambda: dict(rec_transfer=_transfer(c, report_untrained=True)),
        "transfer_npz": lambda: dict(rec_transfer_npz=_transfer(
            c, encoder="{workdir}/encoder.npz", report_untrained=True)),
        "refcoco": lambda: _refcoco(c),
    }
    if variant not in evals:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(evals)}")
    c.evaluators = evals[variant]()
    return c
