"""Builders shared by the evaluation tests (no tests here): a tiny sample corpus eval set, a tiny
tokenizer and a fake training workdir with Orbax checkpoints laid out like the trainer's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_corpus(root: Path, num_eval: int = 40, seed: int = 0) -> Path:
    """The sample corpus's eval dir (refs.json, instances.json, captions.json, images/)."""
    from pipelines.sample_corpus import generate

    return Path(generate(root, 4, num_eval, seed)["eval_dir"])


def evaluator_config(type_name: str, eval_dir: Path, **kw):
    """An evaluator's ConfigDict on a RefCOCO-format eval dir (refs, instances, images) + kw."""
    import ml_collections

    return ml_collections.ConfigDict(dict(
        type=type_name, refs=str(eval_dir / "refs.json"),
        instances=str(eval_dir / "instances.json"), images=str(eval_dir / "images"), **kw))


def make_tokenizer(eval_dir: Path, path: Path, num_loc: int = 1024):
    from model import tokenizer as tk

    refs = json.loads((eval_dir / "refs.json").read_text())
    caps = json.loads((eval_dir / "captions.json").read_text())
    sentences = [s["sent"] for r in refs for s in r["sentences"]]
    sentences += [a["caption"] for a in caps["annotations"]] + ["cap", "aref", "gcap", ":"]
    return tk.save(tk.train_model(sentences * 3, vocab_size=1500, num_loc=num_loc), str(path))


def tiny_model_config(vocab_size: int, **kw):
    from model.configs import get_config

    base = dict(image_size=32, patch_size=16, width=32, depth=1, mlp_dim=64, num_heads=2,
                dec_depth=1, max_len=24, vocab_size=vocab_size)
    return get_config("tiny", **{**base, **kw})


def make_workdir(workdir: Path, tok_path: Path, vocab_size: int, steps=(1, 2, 3),
                 done: bool = True, **model_kw) -> None:
    """config.json + checkpoints/<step>/{params,train_state} (random params per step)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = tiny_model_config(vocab_size, **model_kw)
    (workdir / "config.json").write_text(json.dumps(
        {"model": cfg.to_dict(), "tokenizer": str(tok_path), "total_steps": max(steps or [0])}))
    for step in steps:
        save_checkpoint(workdir, step, cfg)
    if done:
        (workdir / "DONE").write_text(f"{max(steps)}\n")


def save_checkpoint(workdir: Path, step: int, cfg) -> None:
    import jax
    import orbax.checkpoint as ocp

    from model.locca import LocCa, init_params

    params = init_params(LocCa(cfg), jax.random.key(step))
    mngr = ocp.CheckpointManager(workdir / "checkpoints",
                                 options=ocp.CheckpointManagerOptions(create=True),
                                 item_names=("params", "train_state"))
    mngr.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        train_state=ocp.args.StandardSave({"step": jax.numpy.int32(step)})))
    mngr.wait_until_finished()
    mngr.close()


def run_eval(workdir: Path, data_dir: Path, *extra: str, variant: str = "rec",
             timeout: float = 300, background: bool = False):
    """Runs evaluation/run.py as the scheduler would (a fresh process)."""
    cmd = [sys.executable, str(REPO / "evaluation" / "run.py"), "--workdir", str(workdir),
           "--config", f"{REPO}/evaluation/configs/sample.py:{variant},data_dir={data_dir},"
           "batch_size=4,max_per_split=3,transfer_steps=5,poll_s=1", *extra]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    if background:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def results(workdir: Path) -> list[dict]:
    path = workdir / "eval" / "results.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def random_head_run(root: Path, num_eval: int = 40, num_loc: int = 1024):
    """(TrainRun, params, eval_dir): a tiny workdir on a sample-corpus eval set, and random params
    whose output layer is random too (a fresh model's zero-init output layer makes every logit 0,
    so nothing it writes would depend on the image)."""
    import jax
    from flax import traverse_util

    from evaluation.train_run import TrainRun
    from model.locca import init_params

    eval_dir = make_corpus(root / "corpus", num_eval=num_eval)
    tok = make_tokenizer(eval_dir, root / "tok.model", num_loc)
    make_workdir(root / "run", root / "tok.model", tok.vocab_size, steps=(1,),
                 loc_start=tok.loc_start, num_loc=tok.num_loc)
    run = TrainRun.load(str(root / "run"))
    flat = traverse_util.flatten_dict(init_params(run.model, jax.random.key(3)), sep="/")
    kernel = flat["txt/LogitsDense/kernel"]
    flat["txt/LogitsDense/kernel"] = jax.random.normal(jax.random.key(4), kernel.shape) * 0.5
    return run, traverse_util.unflatten_dict(flat, sep="/"), eval_dir
