"""pipelines/files.write_atomic: whole files, replaced in one step, no temp files left behind."""

from pipelines import files


def test_writes_text_and_bytes_and_replaces_without_leftovers(tmp_path):
    path = tmp_path / "config.json"
    files.write_atomic(path, "first\n")
    assert path.read_text() == "first\n"
    files.write_atomic(str(path), "second\n")  # str paths too; an existing file is replaced
    assert path.read_text() == "second\n"
    files.write_atomic(tmp_path / "x.bin", b"\x00\xff")
    assert (tmp_path / "x.bin").read_bytes() == b"\x00\xff"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "x.bin"]
