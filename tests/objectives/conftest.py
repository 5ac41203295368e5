"""Shared setup for the objectives tests.

Every tensor here is tiny (a few dozen numbers), so torch's intra-op thread pool only adds
hand-off cost -- on a busy 2-core machine a single small autograd call can take 100x longer
with 2 threads than with 1. The fixture runs these tests single-threaded and restores the
previous setting afterwards, so other test directories are unaffected.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
