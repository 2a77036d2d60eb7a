"""The same 3 steps on 1 CPU device and on 8 simulated devices (data=8; data=4 x fsdp=2) agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import train_fixtures

from training import trainer
from training.configs.locca import get_config
from training.train_checkpoints import restore_params

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    train_fixtures.write_shards(str(d), num_records=48)
    train_fixtures.write_tokenizer(str(d / "tok.model"))
    return d


def micro(corpus: Path, **mesh):
    c = get_config("micro")
    c.data.train_glob = str(corpus / "train-*.array_record")
    c.tokenizer = str(corpus / "tok.model")
    c.total_steps = STEPS
    c.parallel_prob = 0.5  # exercises per-example randomness under sharding too
    c.checkpoint.interval = STEPS
    c.progress_bar = False
    c.mesh.update(mesh)
    return c


def losses(workdir: Path) -> np.ndarray:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return np.asarray([[r["loss"], r["cap/loss"], r["aref/loss"], r["gcap/loss"]] for r in rows])


def final_params(workdir: Path) -> dict:
    # The params item alone, no CheckpointManager (as the evaluation stage reads it); a target
    # tree is needed because the 8-device checkpoints come from another topology.
    return restore_params(str(workdir / "checkpoints" / str(STEPS) / "params"))


_EIGHT = textwrap.dedent("""
    import sys
    import jax
    assert jax.device_count() == 8, jax.devices()
    sys.path.insert(0, sys.argv[1])
    from test_trainer_exactness import micro
    from training import trainer
    from pathlib import Path
    corpus, out, data, fsdp = Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    assert trainer.train(micro(corpus, data=data, fsdp=fsdp), str(out)) == "done"
""")


@pytest.fixture(scope="module")
def one_device(corpus: Path, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("one_device")
    assert trainer.train(micro(corpus, num_devices=1), str(workdir)) == "done"
    return workdir


@pytest.mark.parametrize("data,fsdp", [
    pytest.param(4, 2, id="data4_fsdp2"),
    pytest.param(8, 1, id="data8", marks=pytest.mark.slow),
])
def test_one_device_equals_eight(one_device: Path, corpus: Path, tmp_path: Path, data: int,
                                 fsdp: int):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    script = [sys.executable, "-c", _EIGHT, str(Path(__file__).parent), str(corpus),
              str(tmp_path / "eight"), str(data), str(fsdp)]
    proc = subprocess.run(script, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    ref_loss, ref_params = losses(one_device), final_params(one_device)
    assert ref_loss.shape == (STEPS, 4) and ref_loss[-1, 0] < ref_loss[0, 0]
    np.testing.assert_allclose(losses(tmp_path / "eight"), ref_loss, rtol=1e-5, atol=1e-5)
    flat_ref, flat_got = dict(_flatten(ref_params)), dict(_flatten(final_params(tmp_path / "eight")))
    assert flat_ref.keys() == flat_got.keys()
    for key, ref in flat_ref.items():
        np.testing.assert_allclose(flat_got[key], ref, rtol=1e-5, atol=1e-5, err_msg=key)
    if fsdp > 1:  # the checkpoint records how arrays were laid out: FSDP really split some
        layout = (tmp_path / "eight" / "checkpoints" / str(STEPS) / "params" / "_sharding")
        assert "fsdp" in layout.read_text(), "nothing was FSDP-sharded"


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flatten(v, f"{prefix}/{k}" if prefix else k)
    else:
        yield prefix, np.asarray(tree)
