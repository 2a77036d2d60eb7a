"""Shared fixtures. Real data lives in ../shared/data next to the repository (never copied into it)."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    """../shared/data/coco-mini: 80 COCO photos with captions and boxes; skips when absent."""
    path = SHARED_DATA / "coco-mini"
    if not (path / "annotations" / "instances_train2017.json").exists():
        pytest.skip(f"real test data not found at {path} (a fresh clone has no ../shared; CI does)")
    return path
