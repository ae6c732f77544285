"""The reference-equivalence tests compare ffkit with plain-torch restatements of the authors' releases in float64,
so that a difference of 1e-6 means a different computation, not rounding."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)
