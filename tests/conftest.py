"""Tests marked `cuda` need a CUDA GPU: without one they are skipped, with the reason."""

import pytest


def pytest_collection_modifyitems(config, items):
    cuda_items = [item for item in items if item.get_closest_marker("cuda")]
    if not cuda_items:
        return
    import torch  # only when a cuda test was collected: `import textgym` alone must stay torch-free

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is false)")
    for item in cuda_items:
        item.add_marker(skip)
