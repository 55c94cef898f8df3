"""Tests marked `cuda` need a CUDA GPU: without one they are skipped, with the reason.

Tests of an optional package (`pytest.importorskip`) skip where it is not installed; with
TEXTGYM_REQUIRE_EXTRAS=1 (set by `.ci/run`, whose `.ci/setup` installs every extra) such a skip is a
failure instead, so a missing package cannot silently turn CI's tests into skips.

Every test runs with one torch thread, and so does every process a test starts (OMP_NUM_THREADS,
set before any test module imports torch): the tiny model and SB3's small networks gain nothing
from a second thread, and on a busy 2-core machine two threads waiting on each other made training
tests ~15x slower in CPU time (the `--model tiny` learning test: 7 s of CPU on 1 thread, 115 s on 2,
same curve). A test that sets another count gets 1 back before the next test starts.
"""

import os
import sys

import pytest

os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(autouse=True)
def one_torch_thread():
    torch = sys.modules.get("torch")  # not imported here: `import textgym` alone must stay torch-free
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


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
