"""The training run as the evaluation stage sees it: config.json, tokenizer, model, params.

Only the `params` item of a step is read, with a plain StandardCheckpointer on
WORKDIR/checkpoints/<step>/params (never a CheckpointManager on the trainer's dir). Before
restoring, the checkpoint's parameter shapes (from its metadata) are compared with the model that
config.json describes; any difference is a CheckpointMismatch naming every differing parameter.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import ml_collections
from etils import epath


class CheckpointMismatch(ValueError):
    """The checkpoint's parameter tree does not match the model config."""


def _flat_shapes(tree: Any, prefix: str = "") -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_flat_shapes(v, f"{prefix}{k}/"))
    else:
        out[prefix.rstrip("/")] = tuple(int(d) for d in tree.shape)
    return out


def compare_shapes(found: dict[str, tuple], expected: dict[str, tuple], limit: int = 8) -> list[str]:
    """Human-readable differences between two {name: shape} maps (empty when they agree)."""
    lines = []
    for name in sorted(set(expected) - set(found))[:limit]:
        lines.append(f"missing in checkpoint: {name} {expected[name]}")
    for name in sorted(set(found) - set(expected))[:limit]:
        lines.append(f"not in model config: {name} {found[name]}")
    for name in sorted(set(found) & set(expected)):
        if found[name] != expected[name] and len(lines) < 3 * limit:
            lines.append(f"{name}: checkpoint {found[name]} vs config {expected[name]}")
    return lines


_NOT_MODEL_FIELDS = ("variant", "parallel_prob")


def _find(cfg: dict, *paths: str) -> Any:
    for path in paths:
        node: Any = cfg
        for key in path.split("."):
            if not isinstance(node, dict) or key not in node:
                node = None
                break
            node = node[key]
        if node not in (None, ""):
            return node
    return None


@dataclasses.dataclass
class TrainRun:
    workdir: str
    config: dict  # WORKDIR/config.json
    model_config: ml_collections.ConfigDict
    tokenizer: Any  # model.tokenizer.Tokenizer
    model: Any  # model.locca.LocCa

    @classmethod
    def load(cls, workdir: str, tokenizer_path: str | None = None) -> TrainRun:
        """Builds the model from WORKDIR/config.json; `tokenizer_path` overrides the recorded one."""
        from model.configs import get_config
        from model.locca import LocCa
        from model.tokenizer import Tokenizer

        path = epath.Path(workdir) / "config.json"
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: --workdir must be a training workdir (training/run.py writes "
                "config.json there)"
            )
        config = json.loads(path.read_text())
        model_dict = _find(config, "model")
        if not isinstance(model_dict, dict):
            raise ValueError(f"{path} has no 'model' section")
        variant = model_dict.get("variant", "tiny")
        # Runs before issue 20 also copied the training setting parallel_prob into "model".
        fields = {k: v for k, v in model_dict.items() if k not in _NOT_MODEL_FIELDS}
        model_config = get_config(variant, **fields)
        tok_path = tokenizer_path or _find(
            config, "tokenizer", "tokenizer_path", "data.tokenizer", "data.tokenizer_path"
        )
        if not tok_path:
            raise ValueError(f"{path} names no tokenizer: pass --tokenizer PATH")
        tok_path = str(tok_path)
        if not epath.Path(tok_path).exists() and (epath.Path(workdir) / tok_path).exists():
            tok_path = str(epath.Path(workdir) / tok_path)
        tokenizer = Tokenizer.load(tok_path)
        if tokenizer.vocab_size != model_config.vocab_size:
            raise CheckpointMismatch(
                f"tokenizer {tok_path} has {tokenizer.vocab_size} ids but the model config says "
                f"vocab_size={model_config.vocab_size}: use the run's own tokenizer"
            )
        recorded = int(model_config.get("num_loc", 0))
        if recorded and (recorded, model_config.loc_start) != (tokenizer.num_loc,
                                                                  tokenizer.loc_start):
            raise CheckpointMismatch(
                f"tokenizer {tok_path} has {tokenizer.num_loc} location bins from id "
                f"{tokenizer.loc_start} but the run was trained with num_loc={recorded} from id "
                f"{model_config.loc_start}: use the run's own tokenizer"
            )
        return cls(str(workdir), config, model_config, tokenizer, LocCa(model_config))

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        from model.locca import param_shapes

        return _flat_shapes(param_shapes(self.model))

    def restore_params(self, step_dir: str | epath.Path) -> dict:
        """Params of one step (float32 on the default device), after the shape check.

        A relative local step_dir is taken from the working directory (Orbax accepts absolute
        paths only, and its metadata read of a relative one returns nothing).
        """
        import jax
        import orbax.checkpoint as ocp

        step_dir = step_dir if "://" in str(step_dir) else os.path.abspath(step_dir)
        params_dir = epath.Path(step_dir) / "params"
        if not params_dir.exists():
            raise FileNotFoundError(f"{params_dir} not found (not a LocCa training checkpoint?)")
        ckptr = ocp.StandardCheckpointer()
        tree = ckptr.metadata(params_dir).item_metadata.tree
        diff = compare_shapes(_flat_shapes(tree), self.expected_shapes())
        if diff:
            raise CheckpointMismatch(
                f"checkpoint {step_dir} does not match the model in {self.workdir}/config.json "
                f"(variant {self.model_config.variant!r}):\n  " + "\n  ".join(diff)
            )
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        # Restored onto one device whatever the training mesh was: eval runs on one host.
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device), tree
        )
        return ckptr.restore(params_dir, target)
