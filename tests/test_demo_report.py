"""The demo's report: targets judged from the stages' own files, untrusted text escaped."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "infra"))
import demo  # noqa: E402
import demo_report  # noqa: E402


def _results(path: Path, rows: list[tuple]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "results.jsonl", "w") as f:
        for step, evaluator, split, metric, value in rows:
            f.write(
                json.dumps(
                    dict(
                        step=step,
                        evaluator=evaluator,
                        split=split,
                        metric=metric,
                        value=value,
                        time=0.0,
                    )
                )
                + "\n"
            )


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    _results(
        tmp_path / "locca" / "eval",
        [
            (100, "rec", "val", "acc@0.5", 0.10),  # an older step: must not be used
            (200, "rec", "val", "acc@0.5", 0.70),
            (200, "rec", "testA", "acc@0.5", 0.60),
            (200, "rec", "testB", "acc@0.5", 0.40),
            (200, "rec", "val", "acc@0.5_prior", 0.10),
            (200, "rec", "testA", "acc@0.5_prior", 0.15),
            (200, "rec", "testB", "acc@0.5_prior", 0.12),
            (200, "rec", "val", "acc@0.5_expected", 0.20),  # shown beside, not the target
            (200, "rec_transfer", "val", "acc@0.5", 0.50),
            (200, "rec_transfer", "val", "acc@0.5_untrained", 0.0),
            (
                200,
                "rec_transfer",
                "train",
                "acc@0.5",
                0.99,
            ),  # the transfer's own train split: ignored
            (200, "captioning", "val", "cider", 1.00),
            (200, "image_reliance", "aref", "loc_reliance", 0.1234),
            (200, "loc_readout", "val", "r2_y1", 0.25),
            (200, "loc_readout", "testA", "r2_y1", 0.75),
        ],
    )
    _results(
        tmp_path / "cap" / "eval",
        [
            (200, "rec_transfer", "val", "acc@0.5", 0.35),
            (200, "captioning", "val", "cider", 1.08),
        ],
    )
    pred_dir = tmp_path / "locca" / "eval" / "predictions"
    pred_dir.mkdir(parents=True)
    (pred_dir / "rec_val_step200.jsonl").write_text(
        json.dumps(
            dict(
                file_name="missing.jpg",
                sentence="<script>alert(1)</script>",
                pred_box=None,
                gt_box=[0, 0, 1, 1],
                iou=None,
            )
        )
        + "\n"
    )
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "corpus.json").write_text(
        json.dumps(dict(command="python pipelines/sample_corpus.py --output '<b>'", seconds=1.0))
    )
    return tmp_path


def _predictions(run_dir: Path, model: str, name: str, split: str, step: int,
                 ious: list[float | None]) -> None:
    """A predictions file of `ious`: expression k is on image k // 2 (two per image)."""
    pred_dir = run_dir / model / "eval" / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    rows = [dict(ref_id=k, image_id=k // 2, sentence=f"s{k}", file_name="x.jpg",
                 pred_box=None if v is None else [0, 0, 1, 1], gt_box=[0, 0, 1, 1], iou=v)
            for k, v in enumerate(ious)]
    (pred_dir / f"{name}_{split}_step{step}.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows))


def test_targets_use_the_last_step_and_held_out_splits(run_dir: Path):
    report = demo_report.build(run_dir)
    targets = report["targets"]
    assert targets["rec_locca"]["value"] == pytest.approx(0.40)  # the worst split
    assert set(targets["rec_locca"]["per_split"]) == {"val", "testA", "testB"}
    assert targets["rec_locca"]["passed"]  # >= 0.3 and >= 3x the prior on every split
    assert targets["rec_locca"]["expected"] == pytest.approx(0.20)
    assert not targets["transfer_gap"]["passed"]  # no prediction files: no paired gap
    assert targets["cider_kept"]["value"] == pytest.approx(-8.0)
    assert not targets["cider_kept"]["passed"]
    saved = json.loads((run_dir / "report.json").read_text())
    assert saved["metrics"]["locca"]["step"] == 200


def test_rec_target_needs_every_split_and_three_times_the_prior(run_dir: Path):
    rows = [(200, "rec", s, "acc@0.5", v) for s, v in (("val", 0.7), ("testA", 0.6))]
    _results(run_dir / "locca" / "eval", rows + [(200, "rec", "testB", "acc@0.5", 0.35),
                                                 (200, "rec", "testB", "acc@0.5_prior", 0.12)])
    assert not demo_report.build(run_dir)["targets"]["rec_locca"]["passed"]  # 0.35 < 3 x 0.12
    _results(run_dir / "locca" / "eval", rows)
    assert not demo_report.build(run_dir)["targets"]["rec_locca"]["passed"]  # testB missing


def test_transfer_gap_is_paired_per_expression_with_an_image_bootstrap(tmp_path: Path):
    for model in ("locca", "cap"):
        _results(tmp_path / model / "eval", [(5, "rec_transfer", "val", "acc@0.5", 0.0)])
    # 40 expressions on 20 images per split; LocCa hits 30 on val, the captioner 10.
    locca = [0.9] * 30 + [0.1] * 10
    cap = [0.1] * 30 + [0.9] * 10
    cap[0] = None  # malformed: a miss
    for split in ("val", "testA", "testB"):
        _predictions(tmp_path, "locca", "rec_transfer", split, 5, locca)
        _predictions(tmp_path, "cap", "rec_transfer", split, 5, cap)
    gap = demo_report.paired_gap(tmp_path)
    assert gap["value"] == pytest.approx(50.0) and gap["count"] == 120  # (30 - 10) / 40
    assert gap["per_split"]["val"]["value"] == pytest.approx(50.0)
    assert 0 < gap["lo"] < 50.0 < gap["hi"] < 100
    # Each per-split interval is wider than the pooled one (a third of the images).
    val = gap["per_split"]["val"]
    assert val["hi"] - val["lo"] > gap["hi"] - gap["lo"]
    t = demo_report.build(tmp_path)["targets"]["transfer_gap"]
    assert t["passed"] and t["value"] == pytest.approx(50.0)
    # Different expressions in the two files: no paired gap rather than a wrong one.
    _predictions(tmp_path, "cap", "rec_transfer", "val", 5, cap[:-1])
    assert set(demo_report.paired_gap(tmp_path)["per_split"]) == {"testA", "testB"}


def test_timings_are_this_runs_stage_times(run_dir: Path):
    # infra/demo.py writes timings.json after the report: what it holds then is the last run's.
    (run_dir / "timings.json").write_text(json.dumps({"stages": {"corpus": 99.0}}))
    assert demo_report.build(run_dir)["timings"] == {"corpus": 1.0}


def test_missing_results_fail_targets_plainly(tmp_path: Path):
    report = demo_report.build(tmp_path)
    assert not any(t["passed"] for t in report["targets"].values())
    assert "NOT met" in (tmp_path / "report.html").read_text()


def test_gallery_shows_the_argmax_predictions(run_dir: Path):
    pred_dir = run_dir / "locca" / "eval" / "predictions"
    row = dict(file_name="missing.jpg", sentence="the expected one", pred_box=None,
               gt_box=[0, 0, 1, 1], iou=None)
    # Sorts first (and at the same step): picked if the gallery did not skip other decodings.
    (pred_dir / "rec_testA_expected_step200.jsonl").write_text(json.dumps(row) + "\n")
    gallery = demo_report.rec_gallery(run_dir)
    assert "rec_val_step200.jsonl" in gallery and "expected" not in gallery


def test_html_escapes_commands(run_dir: Path):
    demo_report.build(run_dir)
    page = (run_dir / "report.html").read_text()
    assert "'<b>'" not in page and "&#x27;&lt;b&gt;&#x27;" in page


def test_stage_reuse_follows_dependencies(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(demo, "RUN_DIR", tmp_path)
    stages = {s.name: s for s in demo.stages()}
    assert stages["annotate"].deps == ("corpus",)
    assert stages["report"].deps == ("eval_locca", "eval_cap", "eval_seed1_locca",
                                     "eval_seed1_cap", "export", "predict")
    assert stages["eval_seed1_locca"].deps == ("eval_locca", "corpus_seed1")
    assert "--num_loc" in stages["tokenizer"].cmd and "--preset" in stages["corpus"].cmd
    corpus = stages["corpus"]
    assert not corpus.is_done()
    corpus.marker.parent.mkdir(parents=True)
    corpus.marker.write_text(json.dumps({"command": corpus.shell()}))
    assert corpus.is_done()
    corpus.marker.write_text(json.dumps({"command": corpus.shell() + " --changed"}))
    assert not corpus.is_done()  # a changed command is redone


def test_cider_target_needs_a_captioner_that_learned(tmp_path: Path):
    for name in ("locca", "cap"):
        _results(tmp_path / name / "eval", [(10, "captioning", "val", "cider", 0.0)])
    target = demo_report.build(tmp_path)["targets"]["cider_kept"]
    assert target["value"] == 0.0 and not target["passed"]


def test_time_target_needs_every_stage_at_default_sizes(run_dir: Path, monkeypatch):
    monkeypatch.setattr(demo, "RUN_DIR", run_dir)
    assert set(demo_report.TIMED_STAGES) == {s.name for s in demo.stages()} - {"report"}

    def mark(name, seconds, default=True):
        (run_dir / "stages" / f"{name}.json").write_text(json.dumps(
            dict(command=f"python {name}", seconds=seconds, default_sizes=default)))

    for name in demo_report.TIMED_STAGES:
        mark(name, 60.0)
    mark("report", 9999.0)  # not counted
    t = demo_report.build(run_dir)["targets"]["demo_time"]
    assert t["value"] == pytest.approx(len(demo_report.TIMED_STAGES)) and t["passed"]
    n = len(demo_report.TIMED_STAGES)
    mark("eval_cap", 60.0 * (26 - n))  # n - 1 + 26 - n = 25 min: still within
    assert demo_report.build(run_dir)["targets"]["demo_time"]["passed"]
    mark("eval_cap", 60.0 * (26 - n) + 1)
    assert not demo_report.build(run_dir)["targets"]["demo_time"]["passed"]
    mark("eval_cap", 60.0, default=False)  # a reduced run (DEMO_NUM_TRAIN=...) proves nothing
    assert not demo_report.build(run_dir)["targets"]["demo_time"]["passed"]
    mark("eval_cap", 60.0)
    (run_dir / "stages" / "train_cap.json").unlink()  # a stage that never finished
    t = demo_report.build(run_dir)["targets"]["demo_time"]
    assert not t["passed"] and not t["complete"]


def test_training_curves_read_the_trainers_metric_names(run_dir: Path):
    (run_dir / "locca").mkdir(exist_ok=True)
    rows = [{"step": s, "cap/loss": 5.0 / s, "aref/loss": 6.0 / s, "gcap/loss": 7.0 / s}
            for s in (1, 2, 3)]
    (run_dir / "locca" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert demo_report.training_curves(run_dir) is not None
    assert demo_report.training_curves(run_dir / "nowhere") is None


def test_reliance_table_shows_each_models_figure(run_dir: Path):
    demo_report.build(run_dir)
    page = (run_dir / "report.html").read_text()
    section = page[page.index("Does the decoder read the image?"):page.index("Metrics at the last")]
    assert "ARef: the 4 box tokens alone" in section and "0.123" in section
    assert "Cap: caption tokens" not in section  # no such result: no row
    empty = demo_report.reliance_table({"locca": {}, "cap": {}})
    assert empty == ""


def test_readout_table_averages_the_held_out_splits(run_dir: Path):
    demo_report.build(run_dir)
    page = (run_dir / "report.html").read_text()
    section = page[page.index("read each box edge?"):page.index("Metrics at the last")]
    assert "R^2 of y1 (top edge)" in section and "0.500" in section  # mean of 0.25 and 0.75
    assert "R^2 of x2" not in section  # no such result: no row
    assert demo_report.readout_table({"locca": {}, "cap": {}}) == ""


def test_a_redone_stage_starts_from_nothing_and_an_interrupted_one_resumes(tmp_path: Path,
                                                                            monkeypatch):
    """Each fake stage appends a line to its output file, as a resuming trainer adds steps to
    its checkpoints: one line = started from nothing, two = continued a previous run's output."""
    monkeypatch.setattr(demo, "RUN_DIR", tmp_path)

    def append(name: str, extra: str = "") -> list[str]:
        out = tmp_path / name / "out.txt"
        code = (f"import pathlib; p = pathlib.Path({str(out)!r}); p.parent.mkdir(exist_ok=True); "
                f"p.open('a').write('x\\n'){extra}")
        return [sys.executable, "-c", code]

    commands = {"a": append("a"), "b": append("b")}
    monkeypatch.setattr(demo, "stages", lambda: [
        demo.Stage("a", commands["a"], "first", outputs=(tmp_path / "a",)),
        demo.Stage("b", commands["b"], "second", deps=("a",), outputs=(tmp_path / "b",)),
    ])

    def lines() -> dict[str, int]:
        return {n: len((tmp_path / n / "out.txt").read_text().splitlines()) for n in "ab"}

    def run(fresh: bool = False) -> None:
        monkeypatch.setenv("FRESH", "1" if fresh else "0")
        assert demo.main() == 0

    run()
    assert lines() == {"a": 1, "b": 1}
    run()  # both reused
    assert lines() == {"a": 1, "b": 1}
    run(fresh=True)  # both redone from nothing, not continued
    assert lines() == {"a": 1, "b": 1}
    # b interrupted (what Ctrl-C leaves: no marker, the time spent so far): it continues its
    # own output, and its recorded time adds the interrupted attempt's.
    (tmp_path / "stages" / "b.json").unlink()
    b = demo.stages()[1]
    b.record_partial(1000.0)
    assert set(demo_report.build(tmp_path)["timings"]) == {"a"}  # unfinished: not a stage time
    run()
    assert lines() == {"a": 1, "b": 2}
    marker = json.loads(b.marker.read_text())
    assert 1000.0 <= marker["seconds"] < 1100.0 and not b.partial.exists()
    # b's marker deleted by hand, its output left: no record of how it was made, so it is redone
    # from nothing (continuing it would report a fraction of its time as the whole).
    b.marker.unlink()
    run()
    assert lines() == {"a": 1, "b": 1}
    assert json.loads(b.marker.read_text())["seconds"] < 100.0
    commands["a"] = append("a", "; print('changed')")  # a's command changed: a and b redone
    run()
    assert lines() == {"a": 1, "b": 1}
