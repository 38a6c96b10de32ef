"""Shared fixtures: paths to the real phantom scan shipped beside the repository."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QRM_DIR = REPO.parent / "shared" / "data" / "qrm-canon-large-rep1"


@pytest.fixture(scope="session")
def qrm_dir() -> Path:
    if not (QRM_DIR / "dicom").is_dir():
        pytest.fail(f"real phantom scan not found at {QRM_DIR} (shared/ must sit beside the repo)")
    return QRM_DIR
