"""LocCa training configs. `get_config(arg)` with arg one of VARIANTS (module docstring of each below).

    python training/run.py --config training/configs/locca.py:tiny --workdir runs/demo/locca

Any field can be overridden on the command line (`--config.optim.lr=3e-4`,
`--config.model.dtype=bfloat16`, `--config.mesh.fsdp=8`). Variants:

  tiny      LocCa on the demo's sample corpus, minutes on a 2-core CPU
  cap_tiny  the same with the location tasks off: the plain-captioner baseline
  micro     a few-second model for the trainer's tests
  S16       ViT-S/16 + decoder at 224 px: the step-time/MFU benchmark model
  B16, L14  the paper's recipe (224 px, batch 8192, lr 1e-3, 10k warmup + cosine, decoupled weight
            decay 1e-4 on kernels, clip 1.0, text length 64, ~9B examples seen)
"""

from __future__ import annotations

import ml_collections

from model import configs as model_configs
from training import data as data_lib

VARIANTS = ("tiny", "cap_tiny", "micro", "S16", "B16", "L14")

# Where `make demo` puts its shards and tokenizer (paths are relative to the repository root).
DEMO_SHARDS = "runs/demo/shards/train-*.array_record"
DEMO_TOKENIZER = "runs/demo/tokenizer/tok.model"
# The paper: ~9B examples at batch 8192.
PAPER_STEPS = 9_000_000_000 // 8192


def _base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 1000
    c.batch_size = 32  # global, over all processes
    c.tokenizer = DEMO_TOKENIZER

    # The loader's own settings (training/data.py's options documents each). Its shard glob is
    # `train_glob`; its resolution, text length and task weights are model.image_size,
    # model.max_len and loss.task_weights (trainer.data_config hands them over: each is set once).
    c.data = data_lib.options()
    c.data.train_glob = DEMO_SHARDS
    c.data.num_workers = 0  # Grain mp_prefetch worker processes; 0 = in-process threads

    c.model = model_configs.get_config("tiny")

    # Loss: sum over tasks of each task's token-mean cross-entropy, times its weight. A task of
    # weight 0 is not trained; data.task_mix="sample" also draws each example's task by them.
    c.loss = ml_collections.ConfigDict()
    c.loss.task_weights = ml_collections.ConfigDict(dict(cap=1.0, aref=1.0, gcap=1.0))
    c.loss.label_smoothing = 0.0
    # Gaussian soft targets on location tokens (sigma in bins of the tokenizer's num_loc; 0 = one-hot, the paper).
    # Neighbouring bins then share the signal (training/loc_targets.py).
    c.loss.loc_sigma = 0.0
    # Anneal that width from loc_sigma_start (0 = no annealing) down to loc_sigma over
    # loc_sigma_steps (0 = total_steps), cosine: wide targets reward "the right patch" early on.
    c.loss.loc_sigma_start = 0.0
    c.loss.loc_sigma_steps = 0
    # CapPa: fraction of Cap examples decoded in parallel (masked inputs, bidirectional attention;
    # tasks.parallel_inputs). CapPa used 0.75; the LocCa paper trains autoregressively: 0.
    c.parallel_prob = 0.0

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"  # adamw | adafactor | sgd
    c.optim.lr = 1e-3
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.decay_rate = 0.8  # adafactor only
    c.optim.weight_decay = 1e-4  # decoupled: not multiplied by lr (training/optim.py)
    c.optim.wd_pattern = r"/kernel$"
    c.optim.grad_clip = 1.0
    c.optim.frozen_pattern = ""  # e.g. "^img/" to train the decoder on a frozen encoder
    c.optim.lr_mults = ()  # e.g. (("^img/", 0.1),)
    c.optim.schedule = ml_collections.ConfigDict(
        dict(name="cosine", warmup_steps=100, end_ratio=0.0, timescale=10_000, cooldown_steps=0)
    )

    # Initialise the encoder from a big_vision ViT .npz or a transformers export directory
    # (evaluation/export.py; strict; dont_load are regexes to skip).
    c.init = ml_collections.ConfigDict(dict(encoder_npz="", dont_load=("head/.*",)))

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, num_devices=0))  # 0: all devices
    c.sharding = ml_collections.ConfigDict(dict(rules=((".*", "fsdp"),), min_shard_size=1024))

    c.checkpoint = ml_collections.ConfigDict(dict(interval=200, keep=3, use_async=True))
    c.log_every = 20
    c.progress_bar = True
    # Peak FLOP/s of one device for MFU; 0 measures a float32 matmul at start-up (CPU).
    c.peak_flops_per_device = 0.0
    c.export_encoder = True
    # Append a CRC of every batch to WORKDIR/batch_hashes.jsonl (determinism/resume audits).
    c.log_batch_hashes = False
    # A directory for JAX's persistent compilation cache ("" = off); speeds up restarts.
    c.compilation_cache_dir = ""
    return c


def _tiny(c: ml_collections.ConfigDict) -> None:
    """python training/run.py --config training/configs/locca.py:tiny --workdir runs/demo/locca

    The demo's LocCa on the RefCOCO-shaped sample corpus with a 32-bin tokenizer
    (`train_tokenizer.py --num_loc 32`): a 64 px ViT with 8 px patches and a 2-layer decoder, so
    a 2-core CPU sees tens of thousands of examples in minutes. Expect well-formed boxes within a
    few hundred steps and REC above the constant-box prior soon after (RESULTS.md has the runs).
    """
    c.total_steps = 1500
    c.batch_size = 32
    # A small model from scratch on a short budget: a higher rate than the paper's 1e-3 (which is
    # for batch 8192 and 10k warmup steps) moves it off the box prior sooner.
    c.optim.lr = 3e-3
    c.optim.schedule.warmup_steps = 100
    c.checkpoint.interval = 250
    # Fixed 2-D sin/cos position embedding: every patch knows where it is from step 0, which a
    # model that must learn boxes in a few hundred steps cannot afford to learn first.
    c.model.posemb = "sincos2d"
    # Location logits start as a Gaussian over the bins around a linear readout of the decoder
    # state (model/decoder.logits_init): placing a box edge is then one regression, not 32
    # unrelated classes to order first.
    c.model.loc_head_init = "gaussian"
    # Location targets: a Gaussian over bins, sigma 3 bins at first (about one 8 px patch of the
    # 64 px image: the precision the model can reach early) and half a bin at the end.
    c.loss.loc_sigma_start = 3.0
    c.loss.loc_sigma = 0.5


def _cap_tiny(c: ml_collections.ConfigDict) -> None:
    """python training/run.py --config training/configs/locca.py:cap_tiny --workdir runs/demo/cap

    The plain-captioner baseline: the same model and budget with the location tasks switched off.
    """
    _tiny(c)
    c.loss.task_weights = ml_collections.ConfigDict(dict(cap=1.0, aref=0.0, gcap=0.0))
    c.data.task_mix = "sample"  # with aref/gcap weight 0: every example is a Cap example


def _micro(c: ml_collections.ConfigDict) -> None:
    """python training/run.py --config training/configs/locca.py:micro --workdir /tmp/micro

    A 2-layer, 64-wide model at 32 px for trainer tests: seconds per run.
    """
    c.model = model_configs.get_config(
        "tiny", image_size=32, patch_size=16, width=64, depth=2, mlp_dim=128, num_heads=2,
        dec_depth=1, max_len=24,
    )
    c.total_steps = 6
    c.batch_size = 8
    c.optim.schedule.warmup_steps = 2
    c.checkpoint.interval = 2
    c.log_every = 1
    c.sharding.min_shard_size = 64


def _paper(c: ml_collections.ConfigDict, model: str) -> None:
    c.model = model_configs.get_config(model)
    c.total_steps = PAPER_STEPS
    c.batch_size = 8192
    c.tokenizer = "gs://YOUR_BUCKET/tokenizer/c4_en_32k_loc.model"
    c.data.train_glob = "gs://YOUR_BUCKET/shards/train-*.array_record"
    c.data.num_workers = 16
    c.optim.lr = 1e-3
    c.optim.weight_decay = 1e-4
    c.optim.grad_clip = 1.0
    c.optim.schedule = ml_collections.ConfigDict(
        dict(name="cosine", warmup_steps=10_000, end_ratio=0.0, timescale=10_000,
             cooldown_steps=0)
    )
    c.checkpoint.interval = 1000
    c.log_every = 100
    c.mesh.fsdp = -1  # shard params and optimizer over every chip; pure FSDP
    c.mesh.data = 1
    c.model.dtype = "bfloat16"


def _s16(c: ml_collections.ConfigDict) -> None:
    """python training/run.py --config training/configs/locca.py:S16 --workdir WORKDIR

    ViT-S/16 LocCa at 224 px with the paper's schedule shape; the benchmark's model
    (tests/benchmarks/train_step.py). Batch 8192 on accelerators; override it on a CPU.
    """
    _paper(c, "S/16")


def _b16(c: ml_collections.ConfigDict) -> None:
    """python training/run.py --config training/configs/locca.py:B16 --workdir gs://B/locca_b16

    The paper's LocCa B/16: 224 px, batch 8192, lr 1e-3, 10k warmup then cosine, decoupled wd 1e-4,
    clip 1.0, text length 64, ~9B examples (1.1M steps). Set --config.data.train_glob and
    --config.tokenizer to your shards and 32k tokenizer; multi-host via infra/train/.
    """
    _paper(c, "B/16")


def _l14(c: ml_collections.ConfigDict) -> None:
    """python training/run.py --config training/configs/locca.py:L14 --workdir gs://B/locca_l14

    The paper's LocCa L/14 recipe (same as B16 with the ViT-L/14 encoder and its half-depth decoder).
    """
    _paper(c, "L/14")


_SETUP = {"tiny": _tiny, "cap_tiny": _cap_tiny, "micro": _micro, "S16": _s16, "B16": _b16,
          "L14": _l14}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    """The training ConfigDict for one of VARIANTS."""
    if arg not in _SETUP:
        raise ValueError(f"unknown training config {arg!r}; choose one of {', '.join(VARIANTS)}")
    c = _base()
    _SETUP[arg](c)
    c.variant = arg
    return c
