"""gs:// against a real GCS server on 127.0.0.1 (tests/gcs_server.py): the clients, and annotate."""

import dataclasses
import json

import annotate_fixtures as af
import pytest
from gcs_server import download_tree, upload_tree

from pipelines import annotate


@pytest.mark.slow  # the annotate gs:// test below reaches the same server
def test_clients_reach_the_server(gcs):
    """Every client the stages use goes to the local server, not to Google."""
    from apache_beam.io.filesystems import FileSystems
    from etils import epath

    server, bucket = gcs
    server.client().bucket(bucket).blob("a/x.txt").upload_from_string(b"hello")
    assert epath.Path(f"gs://{bucket}/a/x.txt").read_text() == "hello"  # gcsfs (fsspec)
    assert [p.name for p in epath.Path(f"gs://{bucket}/a").glob("*.txt")] == ["x.txt"]
    with FileSystems.open(f"gs://{bucket}/a/x.txt") as f:  # Beam gcsio
        assert f.read() == b"hello"


def test_strict_server_enforces_write_once(gcs_strict):
    """The exactly-once evaluation relies on ifGenerationMatch=0; this server must refuse a 2nd."""
    from google.api_core import exceptions

    server, bucket = gcs_strict
    blob = server.client().bucket(bucket).blob("claim")
    blob.upload_from_string(b"a", if_generation_match=0)
    with pytest.raises(exceptions.PreconditionFailed):
        server.client().bucket(bucket).blob("claim").upload_from_string(b"b", if_generation_match=0)


def _records_without_source(out_dir):
    return [dataclasses.replace(r, source="") for r in af.load_shards(out_dir)]


def _argv(inp: str, out: str, *extra: str) -> list[str]:
    return [f"--input={inp}", f"--output={out}", "--runner=FnApiRunner", "--max_pixels=100000",
            "--progress=false", "--num_shards=2", *extra]


def test_annotate_gs_to_gs_equals_local(gcs, tmp_path):
    """Tars and parquet read from gs://, shards/manifest/dead letters/preview written to gs://:
    the same records (all fields but `source`) and counts as the same run on local paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    server, bucket = gcs
    inp = tmp_path / "in"
    af.write_tar(inp / "a.tar", af.clean_samples(0, 5))
    af.write_tar(inp / "b.tar", af.clean_samples(5, 3) + [("broken", {"jpg": b"not a jpeg",
                                                                      "txt": b"a red square"})])
    rows = [af.scene(i) for i in range(20, 24)]
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.table({"key": [f"p{i}" for i in range(4)] + ["p-null"],
                             "jpg": [r[0] for r in rows] + [None],
                             "caption": [r[1] for r in rows] + ["never downloaded"],
                             "json": [json.dumps(r[2]) for r in rows] + [None]}),
                   tmp_path / "pq" / "in.parquet")
    upload_tree(server, tmp_path, f"gs://{bucket}/corpus")

    runs = {}
    for name, fmt, pattern in (("tar", "webdataset", "in/*.tar"),
                               ("parquet", "parquet", "pq/*.parquet")):
        local = annotate.run(_argv(str(tmp_path / pattern), str(tmp_path / f"out-{name}"),
                                   f"--input_format={fmt}"))
        cloud = annotate.run(_argv(f"gs://{bucket}/corpus/{pattern}",
                                   f"gs://{bucket}/shards-{name}", f"--input_format={fmt}"))
        got = download_tree(server, f"gs://{bucket}/shards-{name}", tmp_path / f"got-{name}")
        runs[name] = (local, cloud, got)
        assert set(got) >= {"manifest.json", "dead_letters.jsonl", "preview.html", "preview.png",
                            "train-00000-of-00002.array_record",
                            "train-00001-of-00002.array_record"}, got
        assert not [g for g in got if ".tmp" in g or "write-probe" in g], got
        assert cloud["counts"] == local["counts"]
        assert json.loads((tmp_path / f"got-{name}" / "manifest.json").read_text())["counts"] == \
            local["counts"]
        assert [s["records"] for s in cloud["shards"]] == [s["records"] for s in local["shards"]]
        assert _records_without_source(tmp_path / f"got-{name}") == \
            _records_without_source(tmp_path / f"out-{name}")
        dead = (tmp_path / f"got-{name}" / "dead_letters.jsonl").read_text().splitlines()
        assert len(dead) == local["counts"]["dead_lettered"] == 1
        assert json.loads(dead[0])["source"].startswith(f"gs://{bucket}/corpus/")
    assert runs["tar"][0]["counts"]["written"] == 8
    assert runs["parquet"][0]["counts"]["written"] == 4

    # The tokenizer trains from the gs:// shards and writes its model there: the same model.
    from etils import epath

    from pipelines import train_tokenizer

    common = ["--vocab_size=1320", "--model_type=bpe"]
    train_tokenizer.main([f"--input={tmp_path}/out-tar/train-*.array_record",
                          f"--output={tmp_path}/tok.model", *common])
    train_tokenizer.main([f"--input=gs://{bucket}/shards-tar/train-*.array_record",
                          f"--output=gs://{bucket}/tok.model", *common])
    assert epath.Path(f"gs://{bucket}/tok.model").read_bytes() == (tmp_path / "tok.model").read_bytes()
    assert epath.Path(f"gs://{bucket}/tok.model.json").read_text() == \
        (tmp_path / "tok.model.json").read_text()
