"""RRDBNet (ESRGAN's generator) as torch modules, with the parameter names of Real-ESRGAN's (BasicSR's).

Imported only where a network is built: engines/image/esrgan.py reads and classifies weights
without torch's module machinery.
"""

from __future__ import annotations

import torch
import torch.nn.functional as functional
from torch import nn

from engines.image.esrgan import RrdbConfig


class ResidualDenseBlock(nn.Module):
    """Five convs, each seeing the block's input and every output before it."""

    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            features.append(self.lrelu(conv(torch.cat(features, 1))))
        # Residual scaling by 0.2, as trained.
        out: torch.Tensor = self.conv5(torch.cat(features, 1))
        return out * 0.2 + x


class RRDB(nn.Module):
    """Three residual dense blocks inside one more residual connection."""

    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.rdb3(self.rdb2(self.rdb1(x)))
        return out * 0.2 + x


class RRDBNet(nn.Module):
    """The generator: a trunk of RRDB blocks at input resolution, then x2 nearest-neighbour stages."""

    def __init__(self, config: RrdbConfig) -> None:
        super().__init__()
        self.config = config
        feat = config.num_feat
        self.conv_first = nn.Conv2d(config.num_in_ch * config.unshuffle**2, feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(feat, config.num_grow_ch) for _ in range(config.num_block)))
        self.conv_body = nn.Conv2d(feat, feat, 3, 1, 1)
        # conv_up1, conv_up2, ...: the names of the state dicts (a ModuleList would be conv_up.0).
        self.up_names = [f"conv_up{index}" for index in range(1, config.upsamples + 1)]
        for name in self.up_names:
            self.add_module(name, nn.Conv2d(feat, feat, 3, 1, 1))
        self.conv_hr = nn.Conv2d(feat, feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(feat, config.num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.unshuffle > 1:
            # A x2 or x1 model works on the input folded into channels; its head still upsamples x4.
            x = functional.pixel_unshuffle(x, self.config.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for name in self.up_names:
            feat = self.lrelu(getattr(self, name)(functional.interpolate(feat, scale_factor=2, mode="nearest")))
        out: torch.Tensor = self.conv_last(self.lrelu(self.conv_hr(feat)))
        return out
