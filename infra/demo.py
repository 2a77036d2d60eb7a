"""`make demo` / `make reproduce`: the whole system end to end, offline, on the built-in corpus.

    python infra/demo.py                      # what `make demo` runs (after creating .venv)
    python infra/demo.py --profile reproduce  # what `make reproduce` runs: the paper's claim at
                                              # sample scale, a bigger budget (runs/reproduce/)
    FRESH=1 python infra/demo.py    # redo every stage from nothing instead of reusing them

A profile (PROFILES) fixes the corpus (preset, sizes, location bins), the training budget, the
targets the report checks and the time they must be met in. Both train LocCa (`tiny`) and the plain
captioner (`cap_tiny`) on the same model, data and steps, and evaluate both on the held-out splits
and on a second eval set drawn with another seed (the recipe must not fit one seed).

Every stage is its real command (the same one a user runs in the cloud), called in turn as a
subprocess; its output goes to the terminal and to runs/demo/logs/<stage>.log. A finished stage is
recorded in runs/demo/stages/<stage>.json with its command and seconds, and reused on the next run
while the command is unchanged. Training resumes from its own checkpoints, so Ctrl-C and `make
demo` again continues where it stopped; the stopped attempt's seconds are kept in
stages/<stage>.partial.json and added, so the report's time is the whole stage's. A stage that
is redone (FRESH=1, an input stage redone, a changed command, or outputs with no record of this
demo making them) first has its outputs removed, so it cannot continue from another run's
checkpoints or scores. A failing stage stops the demo with its name, log path and the command to
rerun it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


@dataclasses.dataclass(frozen=True)
class Profile:
    """One end-to-end run's sizes and the targets its report checks (RESULTS.md has the runs).

    train_steps 0 is the training config's own default. `curve`: evaluate every kept checkpoint
    (Acc@0.5 and the transfer gap against steps) instead of the last one only.
    """

    name: str
    num_train: int
    num_eval: int
    train_steps: int
    preset: str
    num_loc: int
    vocab_size: int
    budget_s: int
    rec_min: float  # LocCa REC Acc@0.5 on each held-out split, at least
    rec_prior_ratio: float  # ... and this many times the constant-box prior's (0: no check)
    gap_min_points: float  # frozen-encoder transfer: LocCa minus the captioner, at least
    curve: bool = False
    checkpoint_every: int = 0  # 0: the config's own interval


PROFILES = {
    "demo": Profile("demo", num_train=10_000, num_eval=1000, train_steps=0, preset="refcoco",
                    num_loc=32, vocab_size=1100, budget_s=25 * 60, rec_min=0.3,
                    rec_prior_ratio=3.0, gap_min_points=5.0),
    # Sized from the demo's per-step costs on an idle 2-core CPU; 92 minutes on a shared one
    # (RESULTS.md, 2026-12-08).
    "reproduce": Profile("reproduce", num_train=40_000, num_eval=1000, train_steps=5000,
                         preset="refcoco", num_loc=32, vocab_size=1100, budget_s=2 * 3600,
                         rec_min=0.6, rec_prior_ratio=0.0, gap_min_points=10.0, curve=True,
                         checkpoint_every=1250),
}


def _profile() -> Profile:
    """The profile named by --profile (or DEMO_PROFILE), with the DEMO_* size knobs applied."""
    name = os.environ.get("DEMO_PROFILE", "demo")
    if "--profile" in sys.argv[1:]:
        i = sys.argv.index("--profile")
        name = sys.argv[i + 1] if i + 1 < len(sys.argv) else ""
    if name not in PROFILES:
        raise SystemExit(f"demo: unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    base = PROFILES[name]
    knobs = {"DEMO_NUM_TRAIN": "num_train", "DEMO_NUM_EVAL": "num_eval",
             "DEMO_TRAIN_STEPS": "train_steps", "DEMO_PRESET": "preset"}
    changes = {field: os.environ[k] for k, field in knobs.items() if k in os.environ}
    try:
        changes = {f: (v if f == "preset" else int(v)) for f, v in changes.items()}
    except ValueError as e:
        raise SystemExit(f"demo: a DEMO_* size knob is not a whole number: {e}") from None
    return dataclasses.replace(base, **changes)


PROFILE = _profile()
RUN_DIR = Path(os.environ.get("DEMO_DIR", ROOT / "runs" / PROFILE.name))
# Only a run at the profile's own sizes can meet its time target (the report checks the markers).
DEFAULT_SIZES = PROFILE == PROFILES[PROFILE.name]


@dataclasses.dataclass
class Stage:
    name: str
    cmd: list[str]
    description: str
    deps: tuple[str, ...] = ()
    # What the stage writes. Cleared before the stage is redone, so a redone stage never
    # continues from another run's files (a trainer would resume from the old checkpoint, an
    # evaluator would skip the steps it already scored).
    outputs: tuple[Path, ...] = ()

    @property
    def marker(self) -> Path:
        return RUN_DIR / "stages" / f"{self.name}.json"

    @property
    def partial(self) -> Path:
        """Written while the stage runs and kept if it stops unfinished: the seconds it has
        spent so far, so a resumed stage's marker records the whole stage's time."""
        return RUN_DIR / "stages" / f"{self.name}.partial.json"

    def spent(self) -> float:
        if not self.partial.exists():
            return 0.0
        return float(json.loads(self.partial.read_text()).get("seconds", 0.0))

    def record_partial(self, seconds: float) -> None:
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        self.partial.write_text(json.dumps({"command": self.shell(), "seconds": round(seconds, 1)}))

    @property
    def log(self) -> Path:
        return RUN_DIR / "logs" / f"{self.name}.log"

    def shell(self) -> str:
        return " ".join(shlex.quote(c if c != PY else "python") for c in self.cmd)

    def is_done(self) -> bool:
        if not self.marker.exists():
            return False
        return json.loads(self.marker.read_text()).get("command") == self.shell()


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def _corpus(path: Path, num_train: int, seed: int) -> list[str]:
    return [PY, "pipelines/sample_corpus.py", "--output", _rel(path), "--num_train",
            str(num_train), "--num_eval", str(PROFILE.num_eval), "--seed", str(seed),
            "--preset", PROFILE.preset]


def _evaluate(name: str, variant: str, data_dir: Path) -> list[str]:
    cmd = [PY, "evaluation/run.py", f"--workdir={_rel(RUN_DIR / name)}",
           f"--config=evaluation/configs/sample.py:{variant},data_dir={_rel(data_dir)}"]
    # --watch after training: every kept checkpoint is scored (the learning curve), then it stops
    # at DONE; without it only the last checkpoint is.
    return cmd + (["--watch", "--timeout=60"] if PROFILE.curve else [])


def stages() -> list[Stage]:
    corpus, shards = RUN_DIR / "corpus", RUN_DIR / "shards"
    seed_check = RUN_DIR / "corpus_seed1"
    tok = RUN_DIR / "tokenizer" / "tok.model"
    labeler = ["--labeler", "reference"]
    if os.environ.get("OWLVIT_CHECKPOINT"):
        labeler = ["--labeler", "owlvit", "--owlvit_checkpoint", os.environ["OWLVIT_CHECKPOINT"]]
    train_common = [
        f"--config.data.train_glob={_rel(shards)}/train-*.array_record",
        f"--config.tokenizer={_rel(tok)}",
    ]
    if PROFILE.train_steps:
        train_common.append(f"--config.total_steps={PROFILE.train_steps}")
    if PROFILE.checkpoint_every:
        steps = PROFILE.train_steps or 1
        train_common += [f"--config.checkpoint.interval={PROFILE.checkpoint_every}",
                         f"--config.checkpoint.keep={steps // PROFILE.checkpoint_every + 1}"]
    out = [
        Stage(
            "corpus",
            _corpus(corpus, PROFILE.num_train, seed=0),
            f"build the synthetic web corpus and held-out RefCOCO-style splits "
            f"(preset {PROFILE.preset})",
            outputs=(corpus,),
        ),
        Stage(
            "corpus_seed1",
            _corpus(seed_check, 0, seed=1),
            "a second held-out eval set from another seed (does the recipe fit one seed?)",
            outputs=(seed_check,),
        ),
        Stage(
            "annotate",
            [
                PY,
                "pipelines/annotate.py",
                "--input",
                f"{_rel(corpus)}/web/*.tar",
                "--output",
                _rel(shards),
                "--num_shards",
                "4",
                *labeler,
            ],
            "pseudo-label the corpus with the Beam pipeline and write ArrayRecord shards",
            deps=("corpus",),
            outputs=(shards,),
        ),
        Stage(
            "tokenizer",
            [
                PY,
                "pipelines/train_tokenizer.py",
                "--input",
                f"{_rel(shards)}/train-*.array_record",
                "--output",
                _rel(tok),
                "--vocab_size",
                str(PROFILE.vocab_size),
                "--num_loc",
                str(PROFILE.num_loc),
                # BPE keeps every word of this small corpus whole ("purple" is one piece); the
                # unigram model split even "red" into "re" + "d", which a 2-layer decoder then has
                # to reassemble before it can look for the object.
                "--model_type",
                "bpe",
            ],
            "train the SentencePiece tokenizer with its location tokens",
            deps=("annotate",),
            outputs=(tok.parent,),
        ),
    ]
    for name, config in (("locca", "tiny"), ("cap", "cap_tiny")):
        out.append(
            Stage(
                f"train_{name}",
                [
                    PY,
                    "training/run.py",
                    f"--config=training/configs/locca.py:{config}",
                    f"--workdir={_rel(RUN_DIR / name)}",
                    *train_common,
                ],
                f"train {'LocCa' if name == 'locca' else 'the plain captioner baseline'} ({config})",
                deps=("tokenizer",),
                outputs=(RUN_DIR / name,),
            )
        )
    for name in ("locca", "cap"):
        out.append(
            Stage(
                f"eval_{name}",
                _evaluate(name, "all", corpus / "eval"),
                f"evaluate the {name} checkpoints (REC, frozen-encoder transfer, CIDEr)",
                deps=(f"train_{name}",),
                outputs=(RUN_DIR / name / "eval",),
            )
        )
    for name in ("locca", "cap"):
        out.append(
            Stage(
                f"eval_seed1_{name}",
                [PY, "evaluation/run.py", f"--workdir={_rel(RUN_DIR / name)}",
                 "--config=evaluation/configs/sample.py:seed_check,"
                 f"data_dir={_rel(seed_check / 'eval')}"],
                f"REC and transfer of the {name} model on the other seed's eval set",
                deps=(f"eval_{name}", "corpus_seed1"),
            )
        )
    out += use_stages(corpus)
    out.append(
        Stage(
            "report",
            [PY, "infra/demo_report.py", "--run_dir", _rel(RUN_DIR), "--profile", PROFILE.name],
            f"write {_rel(RUN_DIR)}/report.html and report.json",
            deps=("eval_locca", "eval_cap", "eval_seed1_locca", "eval_seed1_cap", "export",
                  "predict"),
        )
    )
    return out


def use_stages(corpus: Path) -> list[Stage]:
    """What a user does with the trained LocCa: export its encoder with model cards (after its
    evaluation, so the cards carry the results) and run predict on a few held-out images."""
    locca, export_dir, predict_dir = RUN_DIR / "locca", RUN_DIR / "export", RUN_DIR / "predict"
    return [
        Stage("export", [PY, "evaluation/export.py", f"--workdir={_rel(locca)}",
                         f"--output={_rel(export_dir)}"],
              "export LocCa's encoder (big_vision .npz, transformers) with model cards",
              deps=("eval_locca",), outputs=(export_dir,)),
        Stage("predict", [PY, "evaluation/predict_cli.py", f"--workdir={_rel(locca)}",
                          "--task=caption",
                          f"--images={_rel(corpus)}/eval/images/synth_eval_00000[0-7].jpg",
                          f"--output={_rel(predict_dir)}"],
              "caption a few held-out images with LocCa (the predict command)",
              deps=("train_locca",), outputs=(predict_dir,)),
    ]


def plan(stage: Stage, *, fresh: bool, redone: set[str]) -> str:
    """What to do with a stage: "reuse" it when finished; "resume" it when this demo started it
    and it stopped unfinished (Ctrl-C: the trainer goes on from its checkpoint; its partial record
    has the time spent so far); "redo" it from nothing when FRESH=1, when an input stage was
    redone, when it finished with another command, or when its outputs are there with no record
    of this demo making them (a marker deleted by hand, another tool's files): continuing those
    would report a fraction of the stage's time as the whole."""
    if fresh or redone.intersection(stage.deps):
        return "redo"
    if stage.is_done():
        return "reuse"
    if stage.marker.exists():
        return "redo"  # finished with another command
    if stage.partial.exists():
        partial = json.loads(stage.partial.read_text())
        return "resume" if partial.get("command") == stage.shell() else "redo"
    return "redo" if any(p.exists() for p in stage.outputs) else "resume"


def clear_outputs(stage: Stage) -> None:
    stage.marker.unlink(missing_ok=True)
    stage.partial.unlink(missing_ok=True)
    for path in stage.outputs:
        if path.is_dir():
            print(f"  (removing {_rel(path)}: redone from nothing)")
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _run(stage: Stage) -> int:
    stage.log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # A new session keeps the terminal's Ctrl-C away from the child: we forward SIGTERM instead,
    # which the trainer treats as preemption (checkpoint, exit 0).
    with open(stage.log, "a") as log:
        log.write(f"\n$ {stage.shell()}\n")
        proc = subprocess.Popen(
            stage.cmd,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                sys.stdout.write(f"  [{stage.name}] {line}")
                sys.stdout.flush()
            return proc.wait()
        except KeyboardInterrupt:
            print(f"\ninterrupted: stopping {stage.name} cleanly (it saves a checkpoint) ...")
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            print("run `make demo` again to continue from here.")
            raise SystemExit(130) from None


def main() -> int:
    fresh = os.environ.get("FRESH") == "1"
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    all_stages = stages()
    t_start = time.time()
    timings = {}
    redone: set[str] = set()  # a stage whose input was redone is redone too
    for i, stage in enumerate(all_stages, 1):
        header = f"[{i}/{len(all_stages)}] {stage.name}: {stage.description}"
        action = plan(stage, fresh=fresh, redone=redone)
        if action == "reuse":
            print(f"{header} -- done earlier, reusing (FRESH=1 redoes it)")
            timings[stage.name] = json.loads(stage.marker.read_text()).get("seconds")
            continue
        print(f"{header}\n  $ {stage.shell()}")
        if action == "redo":
            clear_outputs(stage)
        spent = stage.spent()  # an interrupted earlier attempt's seconds (resume), else 0
        if spent:
            print(f"  (continuing: {spent:.0f} s spent on it before)")
        t0 = time.time()
        stage.record_partial(spent)
        try:
            rc = _run(stage)
        finally:  # also on Ctrl-C and on failure: the next attempt adds to this
            stage.record_partial(spent + time.time() - t0)
        if rc != 0:
            print(
                f"\ndemo stopped: stage '{stage.name}' failed with exit code {rc}.\n"
                f"  log:   {_rel(stage.log)}\n  rerun: {stage.shell()}",
                file=sys.stderr,
            )
            return 1
        timings[stage.name] = round(spent + time.time() - t0, 1)
        redone.add(stage.name)
        stage.marker.parent.mkdir(parents=True, exist_ok=True)
        stage.marker.write_text(
            json.dumps({"command": stage.shell(), "seconds": timings[stage.name],
                        "default_sizes": DEFAULT_SIZES}, indent=1)
        )
        stage.partial.unlink()
    (RUN_DIR / "timings.json").write_text(
        json.dumps(
            {"stages": timings, "this_run_seconds": round(time.time() - t_start, 1)}, indent=1
        )
    )
    print(f"\n{PROFILE.name} finished in {time.time() - t_start:.0f} s: open "
          f"{_rel(RUN_DIR / 'report.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
