"""results.jsonl + claims: exactly-once across concurrent processes and restarts; curves.png."""

import json
import multiprocessing as mp
import os
import time

from evaluation.plots import plot_curves
from evaluation.results import ResultsStore, split_name


def _worker(eval_dir: str, queue) -> None:
    store = ResultsStore(eval_dir, tensorboard=False)
    mine = []
    for step in range(1, 6):
        for name in ("rec", "cap"):
            if store.try_claim(step, name):
                mine.append((step, name))
                store.write(step, name, [("val/acc@0.5", 0.1 * step), ("eval_seconds", 0.0)])
    queue.put(mine)


def test_concurrent_jobs_do_not_duplicate(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), queue)) for _ in range(3)]
    for p in procs:
        p.start()
    claimed = [pair for _ in procs for pair in queue.get(timeout=60)]
    for p in procs:
        p.join(60)
    assert sorted(claimed) == sorted({(s, n) for s in range(1, 6) for n in ("rec", "cap")})
    rows = ResultsStore(tmp_path).read()
    assert len(rows) == 20  # 5 steps x 2 evaluators x 2 metrics, each exactly once
    assert {r["split"] for r in rows} == {"val", "all"}


def test_restart_skips_done_and_breaks_dead_claims(tmp_path):
    store = ResultsStore(tmp_path, tensorboard=False)
    assert store.try_claim(1, "rec")
    store.write(1, "rec", [("val/acc@0.5", 0.5)])
    assert not ResultsStore(tmp_path).try_claim(1, "rec")  # done: a restart skips it
    # A claim left by a job that died (same host, pid gone) is broken by the next job.
    claim = tmp_path / "claims" / f"{2:012d}-rec.claim"
    claim.write_text(json.dumps({"host": os.uname().nodename, "pid": 2**22 + 12345,
                                 "time": time.time()}))
    assert ResultsStore(tmp_path).try_claim(2, "rec")
    # A live claim (this process) is respected.
    assert not ResultsStore(tmp_path).try_claim(2, "rec")
    # A second result for a recorded pair is discarded: the first one stands.
    assert store.write(1, "rec", [("val/acc@0.5", 0.9)]) == []
    assert [r["value"] for r in store.read()] == [0.5]
    assert json.loads((tmp_path / "results.jsonl").read_text())["value"] == 0.5


def test_split_name_and_curves(tmp_path):
    assert split_name("val/acc@0.5") == ("val", "acc@0.5")
    assert split_name("eval_seconds") == ("all", "eval_seconds")
    store = ResultsStore(tmp_path)
    for step in (1, 2, 3):
        store.write(step, "rec", [("val/acc@0.5", step / 10), ("testA/acc@0.5", step / 20)])
    store.close()
    png = plot_curves(store.read(), tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((tmp_path / "tensorboard").iterdir())


def test_a_results_jsonl_of_the_old_layout_is_kept(tmp_path):
    rows = [{"step": 1, "evaluator": "rec", "split": "val", "metric": "acc@0.5", "value": 0.5,
             "time": 0.0}, {"step": 2, "evaluator": "rec", "split": "val", "metric": "acc@0.5",
                            "value": 0.6, "time": 0.0}]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"st')
    store = ResultsStore(tmp_path, tensorboard=False)
    assert store.done() == {(1, "rec"), (2, "rec")}
    assert store.try_claim(3, "rec")
    store.write(3, "rec", [("val/acc@0.5", 0.7)])
    view = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [(r["step"], r["value"]) for r in view] == [(1, 0.5), (2, 0.6), (3, 0.7)]
