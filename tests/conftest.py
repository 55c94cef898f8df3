"""Tests marked `cuda` need a CUDA GPU: without one they are skipped, with the reason.

Tests of an optional package (`pytest.importorskip`) skip where it is not installed; with
TEXTGYM_REQUIRE_EXTRAS=1 (set by `.ci/run`, whose `.ci/setup` installs every extra) such a skip is a
failure instead, so a missing package cannot silently turn CI's tests into skips.
"""

import os

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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("TEXTGYM_REQUIRE_EXTRAS") == "1" and call.excinfo is not None:
        reason = str(call.excinfo.value)
        if reason.startswith("could not import"):  # pytest.importorskip's message
            report.outcome = "failed"
            report.longrepr = f"{reason}: TEXTGYM_REQUIRE_EXTRAS=1 needs every extra installed (bash .ci/setup)"
