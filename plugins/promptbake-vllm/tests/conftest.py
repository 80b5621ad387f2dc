"""Fixtures for the promptbake-vllm tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # The fakes run many tiny forward passes; on a busy 2-core machine torch's
    # thread hand-offs cost more than the work.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
