"""The LocCa training loop: set-up, resume, train, checkpoint, export. `train(config, workdir)`.

Workdir layout (evaluation reads it; see WORKSPACE.md): config.json, checkpoints/<step>/{params,
train_state,data_iter}, metrics.jsonl, tensorboard/, encoder.npz, DONE.

Preemption: SIGTERM (single process) or JAX's preemption sync point (multi-host) saves a checkpoint
at the current step boundary and returns "preempted"; the same command then resumes exactly.
"""

from __future__ import annotations

import json
import os
import signal
import time
import zlib
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from model.locca import DTYPES, LocCa, init_params
from model.tokenizer import Tokenizer
from model.vit_weights import export_encoder
from pipelines import files
from training import data as data_lib
from training import metrics as metrics_lib
from training import mixture, model_fns, shard_cache, sharding
from training import train_state as ts
from training.bad_records import BadRecordBudget
from training.optim import make_optimizer
from training.train_checkpoints import Checkpointer


def _fail(message: str) -> None:
    raise SystemExit(message)


def check_inputs(config: ml_collections.ConfigDict) -> None:
    """Every path the run needs exists; one readable line otherwise (before compiling anything)."""
    tok = epath.Path(config.tokenizer)
    if not tok.exists():
        _fail(f"tokenizer {config.tokenizer} not found: set --config.tokenizer to a SentencePiece "
              ".model (train one with pipelines/train_tokenizer.py)")
    try:
        mixed = data_lib.mixture_parts(config.data)
    except data_lib.DataError as e:
        _fail(f"--config.data.mixture: {e}")
    try:
        if not mixed:
            data_lib.expand_paths(config.data.train_glob)
    except data_lib.DataError:
        _fail(f"no training shards match {config.data.train_glob!r}: set "
              "--config.data.train_glob to your ArrayRecord shards (pipelines/annotate.py)")
    npz = config.init.get("encoder_npz", "")
    if npz and not epath.Path(npz).exists():
        _fail(f"encoder checkpoint {npz} not found: fix --config.init.encoder_npz or set it to ''")
    if config.batch_size % jax.process_count():
        _fail(f"batch_size {config.batch_size} is not divisible by {jax.process_count()} "
              "processes: change --config.batch_size")
    counts = {"batch_size": config.batch_size, "total_steps": config.total_steps,
              "log_every": config.log_every, "checkpoint.interval": config.checkpoint.interval}
    for name, value in counts.items():
        if int(value) < 1:
            _fail(f"--config.{name} must be >= 1, got {value}")
    if config.model.get("dtype", "float32") not in DTYPES:
        _fail(f"--config.model.dtype {config.model.dtype!r}: use {' or '.join(DTYPES)}")
    try:
        model_fns.active_tasks(config.loss.task_weights)
    except ValueError as e:
        _fail(f"--config.loss.task_weights: {e}")


def resolve_config(config: ml_collections.ConfigDict, tok: Tokenizer) -> ml_collections.ConfigDict:
    """The config with tokenizer-derived model fields filled in (what config.json records)."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.vocab_size = tok.vocab_size
    config.model.pad_id = tok.pad_id
    config.model.loc_start = tok.loc_start  # soft location targets / location-embedding init
    config.model.num_loc = tok.num_loc
    return config


def _staged(glob: str, cache_dir: str) -> str:
    """A shard glob, with gs:// shards replaced by their local copies (in glob order)."""
    if "://" not in str(glob):
        return glob
    return ",".join(shard_cache.stage(data_lib.expand_paths(glob), cache_dir))


def data_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The loader's config: config.data plus the fields stated elsewhere in the training config.
    gs:// shards, of data.train_glob or of a data.mixture part, are read from local copies
    (training/shard_cache.py says why), in glob order."""
    cache_dir = config.data.get("cache_dir", "")
    settings = config.data
    if config.data.get("mixture"):  # the mixture replaces train_glob: only its parts are read
        paths = config.data.train_glob
        settings = ml_collections.ConfigDict(config.data.to_dict())
        settings.mixture = tuple((name, _staged(glob, cache_dir), weight)
                                 for name, glob, weight in config.data.mixture)
    else:
        paths = _staged(config.data.train_glob, cache_dir)
    return data_lib.with_inputs(
        settings, paths=paths, image_size=config.model.image_size,
        text_len=config.model.max_len, task_weights=config.loss.task_weights)


class _StopFlag:
    """Set by SIGTERM; checked at step boundaries."""

    def __init__(self):
        self.set = False
        self._previous = None

    def install(self) -> None:
        # Multi-host runs leave SIGTERM to JAX's preemption service (checked via Orbax).
        if jax.process_count() == 1:
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        del signum, frame
        self.set = True

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def check_cloud_access(paths: list[str]) -> None:
    """A cloud path the run needs is reachable; one readable line otherwise (no traceback)."""
    for path in paths:
        if "://" not in str(path):
            continue
        try:
            epath.Path(str(path).split("*")[0].rsplit("/", 1)[0] or path).exists()
        except Exception as e:  # noqa: BLE001 - network, DNS, credentials: all the same to a user
            detail = (str(e).strip().splitlines() or [""])[0][:200]
            _fail(f"cannot reach {path} ({type(e).__name__}: {detail}): check the network and "
                  "the credentials (gcloud auth application-default login, or the pod's service "
                  "account)")


def train(config: ml_collections.ConfigDict, workdir: str, *, export_only: bool = False) -> str:
    """Trains (or resumes) to config.total_steps. Returns "done", "preempted" or "exported"."""
    mixture_globs = [str(e[1]).split(",")[0] for e in config.data.get("mixture") or () if len(e) > 1]
    check_cloud_access([workdir, config.tokenizer, str(config.data.train_glob).split(",")[0],
                        *mixture_globs])
    check_inputs(config)
    if config.get("compilation_cache_dir"):
        # Persistent XLA cache: restarts (preemption, tests) skip recompiling the same programs.
        jax.config.update("jax_compilation_cache_dir", config.compilation_cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if "://" not in workdir:  # Orbax's tensorstore layer needs absolute local paths
        workdir = os.path.abspath(workdir)
    workdir_path = epath.Path(workdir)
    primary = jax.process_index() == 0
    tok = Tokenizer.load(config.tokenizer)
    config = resolve_config(config, tok)
    if primary:
        workdir_path.mkdir(parents=True, exist_ok=True)
        files.write_atomic(workdir_path / "config.json", config.to_json_best_effort(indent=2) + "\n")

    mesh = sharding.make_mesh(config.mesh)
    if config.batch_size % mesh.devices.size:  # each device gets an equal share of the batch
        _fail(f"batch_size {config.batch_size} is not divisible by the mesh's "
              f"{mesh.devices.size} devices: change --config.batch_size")
    model = LocCa(config.model)
    abstract_params = jax.eval_shape(lambda r: init_params(model, r), jax.random.PRNGKey(0))
    try:
        tx, lr_fn = make_optimizer(config.optim, config.total_steps, abstract_params)
    except ValueError as e:  # an unknown optimizer or schedule name
        _fail(f"--config.optim: {e}")
    abstract, shardings = ts.state_shardings(model, tx, mesh, config.sharding)
    ckpt = Checkpointer(str(workdir_path / "checkpoints"), interval=config.checkpoint.interval,
                        keep=config.checkpoint.keep, use_async=config.checkpoint.use_async)
    latest = ckpt.latest_step()

    if export_only:
        if latest is None:
            _fail(f"no checkpoint in {workdir_path / 'checkpoints'} to export from")
        params, _ = ckpt.restore(latest, abstract["params"],
                                 ts.split_for_checkpoint(abstract)[1], None)
        # Every process: the gather of params sharded across hosts is collective (only
        # process 0 writes).
        export_encoder(params, str(workdir_path / "encoder.npz"))
        ckpt.close()
        return "exported"

    it = data_lib.make_train_iter(
        data_config(config), tok, global_batch_size=config.batch_size, seed=config.seed,
        num_workers=int(config.data.num_workers))
    if latest is not None:
        params, rest = ckpt.restore(latest, abstract["params"],
                                    ts.split_for_checkpoint(abstract)[1], it)
        state = ts.join_from_checkpoint(params, rest)
        logging.info("resumed from step %d", latest)
    else:
        state = ts.init_state(model, tx, shardings, config.seed, config.init)

    step_fn = ts.jit_train_step(
        ts.make_train_step(model, tx, lr_fn, config, tok.mask_id, abstract_params),
        shardings, mesh)
    status = _loop(config, workdir_path, state, it, step_fn, ckpt, mesh, abstract_params, primary)
    if hasattr(it, "close"):
        it.close()
    return status


def _loop(config, workdir_path, state, it, step_fn, ckpt, mesh, abstract_params,
          primary) -> str:
    step = int(jax.device_get(state["step"]))
    total = int(config.total_steps)
    writer = metrics_lib.MetricsWriter(str(workdir_path), enabled=primary, start_step=step)
    bar = metrics_lib.progress_bar(total, step, enabled=primary and config.progress_bar)
    stop = _StopFlag()
    stop.install()
    perf = _Perf(config, mesh, abstract_params)
    compiled = None
    status = "done"
    hashes = None
    budget = BadRecordBudget(config.data.get("max_bad_fraction", 1e-4))
    if config.get("log_batch_hashes") and primary:
        hashes = (workdir_path / "batch_hashes.jsonl").open("a")
    try:
        while step < total:
            if stop.set or ckpt.reached_preemption(step):
                status = "preempted"
                break
            raw = next(it)
            budget.add(raw, step + 1)  # skipped records: counted, and a stop past the rate
            host_batch = ts.numeric_batch(raw)
            host_batch.pop("source", None)  # a mixture's per-example source: host-side only
            if hashes is not None:
                hashes.write(json.dumps({"step": step + 1, "crc": _crc(host_batch)}) + "\n")
                hashes.flush()
            batch = sharding.put_batch(host_batch, mesh)
            if compiled is None:
                compiled = step_fn.lower(state, batch).compile()
                perf.set_compiled(compiled)
            state, metrics = compiled(state, batch)
            step += 1
            perf.tick()
            if bar is not None:
                bar.update(1)
            if step % config.log_every == 0 or step == total:
                row = perf.row(jax.device_get(metrics)) | _examples_seen(config, step)
                row["data/bad_records"] = budget.take_count()
                writer.write(step, row)
                if bar is not None:
                    bar.set_postfix(loss=f"{row['loss']:.3f}")
                else:
                    logging.info("step %d: %s", step, _brief(row))
            params, rest = ts.split_for_checkpoint(state)
            ckpt.save(step, params, rest, it, force=(step == total))
        if status == "preempted":
            params, rest = ts.split_for_checkpoint(state)
            if ckpt.latest_step() != step:
                ckpt.save(step, params, rest, it, force=True)
            logging.info("preempted at step %d: checkpoint saved, exiting", step)
        ckpt.wait()
        if status == "done":
            if config.export_encoder:  # every process: collective gather, process 0 writes
                export_encoder(state["params"], str(workdir_path / "encoder.npz"))
            if primary:
                files.write_atomic(workdir_path / "DONE", f"{step}\n")
    finally:
        stop.uninstall()
        if hashes is not None:
            hashes.close()
        ckpt.close()
        writer.close()
        if bar is not None:
            bar.close()
    return status


def _examples_seen(config: ml_collections.ConfigDict, step: int) -> dict[str, float]:
    """A mixture's examples per source over all processes up to `step` (training/mixture.py):
    exact after a restart, since the interleave is a fixed function of the position."""
    spec = config.data.get("mixture") or ()
    if not spec:
        return {}
    seen = mixture.examples_seen([float(w) for _, _, w in spec], step * int(config.batch_size))
    return {f"examples_seen/{name}": float(n) for (name, _, _), n in zip(spec, seen, strict=True)}


def _crc(batch: dict[str, np.ndarray]) -> int:
    crc = 0
    for key in sorted(batch):
        crc = zlib.crc32(np.ascontiguousarray(batch[key]).tobytes(), crc)
    return crc


def _brief(row: dict[str, float]) -> str:
    keys = ("loss", "cap/loss", "aref/loss", "gcap/loss", "examples_per_sec", "mfu")
    return " ".join(f"{k}={row[k]:.4g}" for k in keys if k in row)


class _Perf:
    """Throughput and MFU for the metrics rows."""

    def __init__(self, config, mesh, abstract_params):
        self.batch = int(config.batch_size)
        # Decoder positions per step: one row per trained task (cap_tiny trains Cap alone).
        tasks = len(model_fns.active_tasks(config.loss.task_weights))
        self.tokens = self.batch * tasks * int(config.model.max_len)
        self.n_devices = mesh.devices.size
        self.platform = mesh.devices.flat[0].platform
        self.peak = float(config.peak_flops_per_device)
        self.flops = None
        self.flops_source = ""
        self.throughput = metrics_lib.Throughput()
        c = config.model
        self.analytic = metrics_lib.analytic_step_flops(
            _count(abstract_params["img"]), _count(abstract_params["txt"]), self.batch,
            (c.image_size // c.patch_size) ** 2, tasks * int(c.max_len))

    def set_compiled(self, compiled) -> None:
        per_device = metrics_lib.compiled_flops(compiled)
        self.flops = per_device * self.n_devices if per_device else self.analytic
        if not self.peak:
            self.peak = metrics_lib.measure_peak_flops()
        self.throughput = metrics_lib.Throughput()  # start timing after compilation

    def tick(self) -> None:
        self.throughput.tick()

    def row(self, metrics: dict[str, Any]) -> dict[str, float]:
        sec, _ = self.throughput.rates()
        row = {k: float(np.asarray(v)) for k, v in metrics.items()}
        row["step_time"] = sec
        row["examples_per_sec"] = self.batch / sec
        row["tokens_per_sec"] = self.tokens / sec
        # Simulated CPU devices share the host's cores: the measured peak is the whole host's.
        peak_total = self.peak * (1 if self.platform == "cpu" else self.n_devices)
        row["flops_per_step"] = self.flops or self.analytic
        row["mfu"] = row["flops_per_step"] / sec / peak_total
        return row


def _count(tree: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def distributed_from_env() -> None:
    """jax.distributed.initialize() when the environment describes a multi-process job.

    Must run before any other JAX call. TPU pods and Slurm/Kubernetes JobSets are auto-detected
    by JAX; JAX_COORDINATOR_ADDRESS (+ JAX_NUM_PROCESSES, JAX_PROCESS_ID) covers the rest.
    """
    markers = ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
               "SLURM_JOB_ID", "JOBSET_NAME")
    if any(os.environ.get(m) for m in markers) and os.environ.get("LOCCA_SINGLE_PROCESS") != "1":
        t = time.time()
        jax.distributed.initialize()
        logging.info("jax.distributed initialised in %.1fs: process %d of %d", time.time() - t,
                     jax.process_index(), jax.process_count())
