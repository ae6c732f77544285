import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def tiny_batch(in_channels: int = 1, batch: int = 4, num_classes: int = 10, size: int = 32):
    x = torch.rand(batch, in_channels, size, size)
    y = torch.arange(batch) % num_classes
    return x, y
