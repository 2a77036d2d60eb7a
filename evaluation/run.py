"""Scores a training run's checkpoints: `python evaluation/run.py --workdir W --config C [--watch]`.

    python evaluation/run.py --workdir runs/locca_tiny \
        --config evaluation/configs/sample.py:all,data_dir=runs/corpus/eval [--watch] [--step N]

Without --watch: evaluates the latest (or --step) complete checkpoint and exits. With --watch: waits
for checkpoints, evaluates each once, stops when the trainer wrote WORKDIR/DONE and everything is
scored (or after --timeout seconds without a new checkpoint). Results: WORKDIR/eval/results.jsonl,
WORKDIR/eval/tensorboard/, WORKDIR/eval/curves.png. Safe to restart and to run twice at once.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # `python evaluation/run.py` from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import app, flags, logging  # noqa: E402
from etils import epath  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from evaluation import watch, write_once  # noqa: E402
from evaluation.evaluators import base  # noqa: E402
from evaluation.results import ResultsStore  # noqa: E402
from evaluation.train_run import CheckpointMismatch, TrainRun  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "evaluation config file[:variant]")
_WORKDIR = flags.DEFINE_string("workdir", None, "training workdir (has config.json, checkpoints/)")
_WATCH = flags.DEFINE_bool("watch", False, "wait for new checkpoints until the trainer is DONE")
_STEP = flags.DEFINE_integer("step", None, "evaluate this step (default: the latest)")
_TIMEOUT = flags.DEFINE_float("timeout", None, "with --watch: stop after this many seconds "
                              "without a new checkpoint")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "tokenizer .model (default: config.json's)")


def log(msg: str) -> None:
    print(f"[eval {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fill_paths(node, values: dict[str, str]):
    """Fills {data_dir} / {images_dir} / {workdir} in every string of an evaluator config."""
    for key, value in node.items():
        if isinstance(value, str):
            for _ in range(3):  # images_dir itself may refer to data_dir
                value = value.format(**values) if "{" in value else value
            node[key] = value
        elif hasattr(value, "items"):
            fill_paths(value, values)


class Job:
    def __init__(self, workdir: str, config, tokenizer: str | None):
        self.workdir = workdir
        self.config = config
        self.run = TrainRun.load(workdir, tokenizer or config.get("tokenizer") or None)
        if not config.data_dir and "{data_dir}" in str(config.evaluators):
            raise ValueError("no eval data: set data_dir (e.g. --config "
                             "evaluation/configs/sample.py:all,data_dir=CORPUS/eval)")
        values = dict(workdir=workdir, data_dir=config.data_dir)
        values["images_dir"] = config.images_dir.format(**values)
        shared: dict = {}
        self.evaluators = {}
        for name, ev_config in config.evaluators.items():
            fill_paths(ev_config, values)
            if "name" not in ev_config:  # what the evaluator's own files are called
                with ev_config.unlocked():
                    ev_config.name = name
            self.evaluators[name] = base.build(ev_config.type, ev_config, self.run, shared)
        self.store = ResultsStore(write_once.join(workdir, "eval"),
                                  stale_after_s=config.stale_claim_s)
        self.failures = 0

    def evaluate_step(self, step: int, step_dir: epath.Path) -> bool:
        """Runs every evaluator this job can claim for `step`; True if the step is fully scored."""
        ctx = base.StepContext(step, step_dir, self.run)
        wrote = False
        for name, evaluator in self.evaluators.items():
            if not self.store.try_claim(step, name):
                continue
            start = time.time()
            try:
                metrics = list(evaluator.run(ctx))
            except CheckpointMismatch:
                self.store.release(step, name)
                raise
            except FileNotFoundError as e:  # keep-N deleted the step under us: nothing to score
                self.store.release(step, name)
                log(f"step {step} vanished ({e}); skipping it")
                return True
            except Exception:  # one broken evaluator must not stop the others or the job
                self.store.release(step, name)
                self.failures += 1
                log(f"evaluator {name} failed on step {step}:\n{traceback.format_exc()}")
                continue
            metrics.append(("eval_seconds", time.time() - start))
            self.store.write(step, name, metrics)
            wrote = True
            summary = ", ".join(f"{k}={v:.4g}" for k, v in metrics if "/" in k)[:300]
            log(f"step {step} {name}: {summary}")
        if wrote:
            self.store.save_curves()
        done = self.store.done()
        return all((step, n) in done for n in self.evaluators)

    def sweep(self, steps: dict[int, epath.Path]) -> bool:
        complete = True
        for step in sorted(steps):
            complete &= self.evaluate_step(step, steps[step])
        return complete


def _wait_for_config(workdir: str, timeout: float | None, poll_s: float) -> None:
    start = time.time()
    while not (epath.Path(workdir) / "config.json").exists():
        if timeout is not None and time.time() - start > timeout:
            raise SystemExit(f"{workdir}/config.json never appeared (--timeout {timeout:.0f}s)")
        log(f"waiting for {workdir}/config.json (the trainer writes it at start)")
        time.sleep(poll_s)


def main(argv) -> int:
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
    if _WORKDIR.value is None or _CONFIG.value is None:
        raise SystemExit("both --workdir TRAIN_DIR and --config evaluation/configs/NAME.py[:variant]"
                         " are required")
    workdir = _WORKDIR.value
    if "://" not in workdir:  # Orbax reads metadata of relative local paths as empty.
        workdir = os.path.abspath(workdir)
    config = _CONFIG.value
    if _WATCH.value:
        _wait_for_config(workdir, _TIMEOUT.value, config.poll_s)
    try:
        job = Job(workdir, config, _TOKENIZER.value)
        if _WATCH.value:
            log(watch.wait_forever_message(workdir))
            watch.watch(workdir, job.sweep, poll_s=int(config.poll_s),
                        idle_timeout_s=_TIMEOUT.value, log=log)
        else:
            for step, path in watch.iter_once(workdir, _STEP.value):
                failures_before = job.failures
                if not job.evaluate_step(step, path) and job.failures == failures_before:
                    log(f"step {step}: some evaluators are claimed by another running job")
    except CheckpointMismatch as e:
        raise SystemExit(f"error: {e}") from None
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    finally:
        if "job" in locals():
            job.store.close()
    log(f"results in {write_once.join(workdir, 'eval', 'results.jsonl')}")
    return 1 if job.failures else 0


if __name__ == "__main__":
    app.run(main)
