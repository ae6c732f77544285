"""Assemble a small DeeperForward-style network from ffkit's parts and train it on real Fashion-MNIST.

    python examples/build_your_own.py            # about 20 seconds on a 2-core CPU

Uses the first 5,000 training images and 2,000 test images so that it stays quick.
"""

import torch
from torch.utils.data import DataLoader, Subset

import ffkit
from ffkit.layers import CWConv

torch.manual_seed(0)
K = 10  # classes; every CWConv's width is a multiple of K (each class owns width / K channels)
layers = [
    CWConv(1, 40, K, kernel_size=5, dropout=0.1),  # 32x32
    CWConv(40, 80, K, pool=2, dropout=0.1),  # 16x16
    CWConv(80, 120, K, pool=2, shortcut_channels=40),  # 8x8; conv makes 80, layer 1's 40 are concatenated
    CWConv(120, 160, K, shortcut_channels=80),  # conv makes 80, layer 2's 80 (pooled 16x16 -> 8x8) concatenated
]
net = ffkit.FFNetwork(
    layers, ffkit.ClassScoreObjective(), num_classes=K, in_channels=1, input_norm=True, shortcuts={2: 0, 3: 1}
)

train = Subset(ffkit.load_dataset("fashion-mnist", "train"), range(5000))
test = Subset(ffkit.load_dataset("fashion-mnist", "test"), range(2000))
loader = DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator())
epochs = 2
trainer = ffkit.LocalTrainer(net, lr=0.01, total_steps=epochs * len(loader))
trainer.fit(loader, epochs=epochs, test=DataLoader(test, batch_size=256))
