"""Mix parts from two papers: DeeperForward's CW-Conv backbone trained with The Trifecta's SymBa loss and label
channel, and a CW-Conv network trained with The Trifecta's overlapping local updates (OLU).

    python examples/mix_parts.py            # about 30 seconds on a 2-core CPU (real Fashion-MNIST slice)
"""

import torch
from torch.utils.data import DataLoader, Subset

import ffkit
from ffkit.layers import CWConv

torch.manual_seed(0)
K = 10
train = Subset(ffkit.load_dataset("fashion-mnist", "train"), range(4000))
test = DataLoader(Subset(ffkit.load_dataset("fashion-mnist", "test"), range(1000)), batch_size=250)
loader = DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator())


def cw_layers(in_channels: int) -> list[CWConv]:
    return [CWConv(in_channels, 40, K, kernel_size=5), CWConv(40, 80, K, pool=2), CWConv(80, 80, K, pool=2)]


# 1. SymBa on a DeeperForward backbone: the label is an extra input channel; each CW-Conv layer's mean goodness
#    separates positives (true label) from negatives (a random wrong label).
symba_net = ffkit.FFNetwork(
    cw_layers(in_channels=2),  # image + label channel
    ffkit.PosNegObjective(ffkit.LabelChannel(K, 32, 32), ffkit.RandomNegative(K), loss="symba", alpha=4.0),
    num_classes=K,
    in_channels=1,
)
# 2. DeeperForward's own objective, with The Trifecta's overlapping local updates.
olu_net = ffkit.FFNetwork(cw_layers(in_channels=1), ffkit.ClassScoreObjective(), num_classes=K, in_channels=1,
                          input_norm=True)

for name, net, overlap in (("SymBa on CW-Conv", symba_net, False), ("CW-Conv with OLU", olu_net, True)):
    trainer = ffkit.LocalTrainer(net, lr=0.005, total_steps=2 * len(loader), overlap=overlap)
    history = trainer.fit(loader, epochs=2, test=test, log=None)
    print(f"{name}: test accuracy (all layers) {100 * history[-1]['test']['all_layers']:.2f}% on 1,000 images")
