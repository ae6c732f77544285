import pytest
import torch

# The suite's models are tiny: one thread avoids oversubscribing CI's 2 cores and is several times faster here.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
