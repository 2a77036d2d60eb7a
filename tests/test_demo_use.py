"""The demo's export and predict stages (infra/demo.py use_stages), run in-process with their own
arguments on a `tiny` run trained here, and the report section that links their outputs."""

import shutil
import sys
from pathlib import Path

import pytest
from eval_fixtures import make_corpus

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "infra"))
import demo  # noqa: E402
import demo_report  # noqa: E402

from evaluation import export, predict_cli  # noqa: E402


def test_stages_follow_locca_and_feed_the_report():
    names = [s.name for s in demo.stages()]
    assert names.index("export") > names.index("eval_locca")
    assert names.index("predict") > names.index("train_locca")
    assert {"export", "predict"} <= set(next(s for s in demo.stages() if s.name == "report").deps)
    assert {"export", "predict"} <= set(demo_report.TIMED_STAGES)


def test_export_and_predict_stages_and_the_report_section(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "RUN_DIR", tmp_path)
    shutil.copytree(tiny_run, tmp_path / "locca")
    make_corpus(tmp_path / "corpus", num_eval=10)
    stages = {s.name: s for s in demo.use_stages(tmp_path / "corpus")}
    export.main(stages["export"].cmd[2:])
    predict_cli.main(stages["predict"].cmd[2:])
    assert (tmp_path / "export" / "transformers" / "model.safetensors").exists()
    assert len(list((tmp_path / "predict" / "images").glob("*.png"))) == 8

    section = demo_report.use_section(tmp_path)
    for rel in ("export/transformers/README.md", "export/big_vision/README.md",
                "predict/index.html"):
        assert f'<a href="{rel}">' in section
    assert section.count("<figure>") == 8 and 'src="predict/images/00000_synth_eval_000000.png"' \
        in section
    assert "Use what you trained" in (demo_report.build(tmp_path), (tmp_path / "report.html")
                                      .read_text())[1]


@pytest.mark.parametrize("missing", ["export", "predict"])
def test_report_section_says_what_is_missing(tmp_path, missing):
    section = demo_report.use_section(tmp_path)
    assert f"{missing}/" in section and "(missing)" in section
    assert "no predict images found" in section
