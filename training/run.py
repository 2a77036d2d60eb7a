"""Train LocCa: `python training/run.py --config training/configs/locca.py:tiny --workdir DIR`.

Overrides: `--config.key=value` (e.g. `--config.total_steps=200 --config.model.dtype=bfloat16`).
The same command resumes after a stop or preemption; `--export_only` writes DIR/encoder.npz from
the latest checkpoint and exits. Multi-host jobs call jax.distributed.initialize() first (when the
environment describes one), before anything else touches JAX.
"""

from __future__ import annotations

import logging as pylogging
import sys
from pathlib import Path

# Running the file directly (python training/run.py) puts training/ on sys.path, not the repo.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file, e.g. training/configs/locca.py:tiny", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and DONE go.")
_EXPORT_ONLY = flags.DEFINE_bool(
    "export_only", False, "Only export the latest checkpoint's encoder to WORKDIR/encoder.npz.")


class _QuietLibraries(pylogging.Filter):
    """Keeps Orbax/Grain INFO chatter (dozens of lines per checkpoint) out of the training log."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        noisy = any(part in record.pathname for part in ("/orbax/", "/grain/"))
        return record.levelno >= pylogging.WARNING or not noisy


def _one_line(error: BaseException) -> str:
    """The informative last line of an error (config_flags embeds whole tracebacks)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[-1] if lines else type(error).__name__
    if isinstance(error, AttributeError | KeyError):
        text = f"no config field {text.strip(chr(34))}"
    return text


def _parse_flags(argv: list[str]) -> list[str]:
    """absl parsing with one readable line (no traceback) for a bad flag or config file."""
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 - config_flags raises many types; all are user errors
        raise SystemExit(f"bad flag: {_one_line(e)} (e.g. --config training/configs/locca.py:tiny"
                         " --config.total_steps=100; --helpfull lists the flags)") from None


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments {argv[1:]}: flags look like --name=value")
    try:
        config = _CONFIG.value
        if config is not None:
            config.get("total_steps")  # a file that failed to load raises only on first use
    except OSError as e:  # config_flags defers a missing/broken config file to first use
        raise SystemExit(f"cannot load --config: {_one_line(e)}") from None
    if config is None:
        raise SystemExit("missing --config: e.g. --config training/configs/locca.py:tiny")
    if not _WORKDIR.value:
        raise SystemExit("missing --workdir: the directory for checkpoints and metrics")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    from training import trainer  # Imports JAX: after flag parsing, before any JAX call below.

    trainer.distributed_from_env()
    status = trainer.train(config, _WORKDIR.value, export_only=_EXPORT_ONLY.value)
    logging.info("training %s", status)
    print(f"training {status}: {_WORKDIR.value}", flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
