"""The VGG layouts shared by DTG-FF's networks and the single-head backprop baselines, so both stay identical."""

from __future__ import annotations

#: VGG8 as DTG-FF describes it: 7 conv layers, 2x average pooling after layers 1, 3, 4 and 5 (1-based).
VGG8_CHANNELS = (128, 256, 256, 512, 512, 512, 512)
VGG8_POOL_AFTER = (0, 2, 3, 4)  # 0-based
#: VGG11's 8 conv layers (Simonyan & Zisserman, config A), pooling after layers 1, 2, 4, 6, 8 (1-based).
VGG11_CHANNELS = (64, 128, 256, 256, 512, 512, 512, 512)
VGG11_POOL_AFTER = (0, 1, 3, 5, 7)
