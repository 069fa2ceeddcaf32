import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu need CUDA: without it they are skipped, with the reason in the summary (-ra)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: run pytest -m gpu (or benchmarks/gpu_check.py) on one")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
