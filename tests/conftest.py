import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before any Qt import

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def imagenet_sample() -> Path:
    path = REPO_ROOT.parent / "shared" / "imagenet-sample-500"
    if not path.is_dir():
        pytest.skip("../shared/imagenet-sample-500 not present: accuracy tests need the labelled ImageNet sample")
    return path
