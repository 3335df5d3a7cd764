"""The benchmarks' CIFAR networks restated in PyTorch from their definitions (RepDistiller / mdistiller
`models/cifar/`): same modules, `state_dict` names, forward passes, features and initialisation.

`forward` returns `(logits, {role: tensor})` with kdjax's role names. One deliberate
difference: mdistiller's WRN computes its pre-activation features by calling the next block's
`bn1` a second time, which in training mode moves that BatchNorm's running statistics twice
per step; here a forward hook reads the output of the call the block already makes (the same
values, one update). Only `make_zoo_reference.py` imports this (torch is not a test dependency).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _fan_out_normal(model: nn.Module, linear_std: float | None) -> None:
    """Conv ~ N(0, 2 / (k * k * out)), BN 1 and 0; Linear ~ N(0, linear_std) with zero bias if given."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1)
            m.bias.data.zero_()
        elif isinstance(m, nn.Linear) and linear_std is not None:
            m.weight.data.normal_(0, linear_std)
            m.bias.data.zero_()


# --- ResNet -----------------------------------------------------------------------------------------------

class ResBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        preact = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(preact), preact


class ResNet(nn.Module):
    def __init__(self, depth, filters, num_classes):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, filters[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters[0])
        inplanes = filters[0]
        for stage in (1, 2, 3):
            blocks = []
            for i in range(n):
                stride = 2 if stage > 1 and i == 0 else 1
                down = None
                if i == 0 and (stride != 1 or inplanes != filters[stage]):
                    down = nn.Sequential(nn.Conv2d(inplanes, filters[stage], 1, stride, bias=False),
                                         nn.BatchNorm2d(filters[stage]))
                blocks.append(ResBlock(inplanes, filters[stage], stride, down))
                inplanes = filters[stage]
            setattr(self, f"layer{stage}", nn.ModuleList(blocks))
        self.fc = nn.Linear(filters[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        roles = {}
        for stage in (1, 2, 3):
            for block in getattr(self, f"layer{stage}"):
                x, preact = block(x)
            roles[f"stage{stage}"], roles[f"preact{stage}"] = x, preact
        roles["pooled"] = F.avg_pool2d(x, 8).flatten(1)
        return self.fc(roles["pooled"]), roles


# --- WRN --------------------------------------------------------------------------------------------------

class WideBlock(nn.Module):
    def __init__(self, in_planes, out_planes, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.equal = in_planes == out_planes
        self.convShortcut = None if self.equal else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)

    def forward(self, x):
        activated = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(activated))))
        return (x if self.equal else self.convShortcut(activated)) + out


class NetworkBlock(nn.Module):
    def __init__(self, n, in_planes, out_planes, stride):
        super().__init__()
        self.layer = nn.Sequential(*[WideBlock(in_planes if i == 0 else out_planes, out_planes,
                                               stride if i == 0 else 1) for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth, width, num_classes):
        super().__init__()
        channels = [16, 16 * width, 32 * width, 64 * width]
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.fc = nn.Linear(channels[3], num_classes)
        _fan_out_normal(self, None)
        self.fc.bias.data.zero_()
        self._seen = {}
        for name, bn in (("preact1", self.block2.layer[0].bn1), ("preact2", self.block3.layer[0].bn1),
                         ("preact3", self.bn1)):
            bn.register_forward_hook(lambda module, args, output, name=name: self._seen.__setitem__(name, output))

    def forward(self, x):
        roles = {}
        x = self.conv1(x)
        for stage in (1, 2, 3):
            x = roles[f"stage{stage}"] = getattr(self, f"block{stage}")(x)
        x = F.relu(self.bn1(x))
        roles["pooled"] = F.avg_pool2d(x, 8).flatten(1)
        return self.fc(roles["pooled"]), roles | self._seen


# --- VGG --------------------------------------------------------------------------------------------------

VGG_CONFIGS = {"vgg8": [[64], [128], [256], [512], [512]],
               "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]]}


class VGG(nn.Module):
    def __init__(self, config, num_classes):
        super().__init__()
        in_channels = 3
        for b, widths in enumerate(config):
            layers = []
            for width in widths:
                layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                in_channels = width
            setattr(self, f"block{b}", nn.Sequential(*layers[:-1]))
        self.classifier = nn.Linear(512, num_classes)
        _fan_out_normal(self, 0.01)

    def forward(self, x):
        size, roles = x.shape[2], {}
        for b in range(5):
            if 0 < b < 4 or (b == 4 and size == 64):
                x = F.max_pool2d(x, 2, 2)
            x = getattr(self, f"block{b}")(x)
            if b:
                roles[f"preact{b}"] = x
            x = roles[f"stage{b}"] = F.relu(x)
        roles["pooled"] = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(roles["pooled"]), roles


# --- MobileNetV2 ------------------------------------------------------------------------------------------

class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand):
        super().__init__()
        hidden = inp * expand
        self.residual = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup))

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, expand, width, num_classes):
        super().__init__()
        groups = [[1, 16, 1, 1], [expand, 24, 2, 1], [expand, 32, 3, 2], [expand, 64, 4, 2], [expand, 96, 3, 1],
                  [expand, 160, 3, 2], [expand, 320, 1, 1]]
        channels = int(32 * width)
        self.conv1 = nn.Sequential(nn.Conv2d(3, channels, 3, 2, 1, bias=False), nn.BatchNorm2d(channels),
                                   nn.ReLU(inplace=True))
        self.blocks = nn.ModuleList()
        for t, c, n, s in groups:
            out = int(c * width)
            layers = []
            for stride in [s] + [1] * (n - 1):
                layers.append(InvertedResidual(channels, out, stride, t))
                channels = out
            self.blocks.append(nn.Sequential(*layers))
        self.conv2 = nn.Sequential(nn.Conv2d(channels, 1280, 1, 1, 0, bias=False), nn.BatchNorm2d(1280),
                                   nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Linear(1280, num_classes))
        _fan_out_normal(self, 0.01)

    def forward(self, x):
        x, roles = self.conv1(x), {}
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in (1, 2, 4, 6):
                roles[f"stage{(1, 2, 4, 6).index(i) + 1}"] = x
        x = self.conv2(x)
        roles["pooled"] = F.avg_pool2d(x, 2, ceil_mode=True).flatten(1)
        return self.classifier(roles["pooled"]), roles


# --- ShuffleNet V1 and V2 (PyTorch's default initialisation) -----------------------------------------------

def _shuffle(x, groups):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class BottleneckV1(nn.Module):
    def __init__(self, in_planes, out_planes, stride, groups):
        super().__init__()
        mid = out_planes // 4
        self.first_groups = 1 if in_planes == 24 else groups
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x):
        out = _shuffle(F.relu(self.bn1(self.conv1(x))), self.first_groups)
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        if self.stride == 2:
            preact = torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1)
        else:
            preact = out + x
        return F.relu(preact), preact


class ShuffleNetV1(nn.Module):
    def __init__(self, num_classes, planes=(240, 480, 960), blocks=(4, 8, 4), groups=3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_planes = 24
        for stage, (out, n) in enumerate(zip(planes, blocks), start=1):
            layers = []
            for i in range(n):
                layers.append(BottleneckV1(in_planes, out - (in_planes if i == 0 else 0), 2 if i == 0 else 1, groups))
                in_planes = out
            setattr(self, f"layer{stage}", nn.ModuleList(layers))
        self.linear = nn.Linear(planes[-1], num_classes)

    def forward(self, x):
        x, roles = F.relu(self.bn1(self.conv1(x))), {}
        for stage in (1, 2, 3):
            for block in getattr(self, f"layer{stage}"):
                x, preact = block(x)
            roles[f"stage{stage}"], roles[f"preact{stage}"] = x, preact
        roles["pooled"] = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.linear(roles["pooled"]), roles


class BasicBlockV2(nn.Module):
    def __init__(self, channels):
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x):
        half = x.shape[1] // 2
        passed, branch = x[:, :half], x[:, half:]
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(branch)))))
        pre = self.bn3(self.conv3(out))
        return _shuffle(torch.cat([passed, F.relu(pre)], 1), 2), torch.cat([passed, pre], 1)


class DownBlockV2(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x):
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        right = F.relu(self.bn5(self.conv5(right)))
        return _shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes, planes=(116, 232, 464, 1024), blocks=(3, 7, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_channels = 24
        for stage, (out, n) in enumerate(zip(planes, blocks), start=1):
            setattr(self, f"layer{stage}", nn.Sequential(DownBlockV2(in_channels, out),
                                                         *[BasicBlockV2(out) for _ in range(n)]))
            in_channels = out
        self.conv2 = nn.Conv2d(planes[2], planes[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes[3])
        self.linear = nn.Linear(planes[3], num_classes)

    def forward(self, x):
        x, roles = F.relu(self.bn1(self.conv1(x))), {}
        for stage in (1, 2, 3):
            layer = getattr(self, f"layer{stage}")
            x = layer[0](x)
            for block in layer[1:]:
                x, preact = block(x)
            roles[f"stage{stage}"], roles[f"preact{stage}"] = x, preact
        x = F.relu(self.bn2(self.conv2(x)))
        roles["pooled"] = F.avg_pool2d(x, 4).flatten(1)
        return self.linear(roles["pooled"]), roles


CIFAR, WIDE = (16, 16, 32, 64), (32, 64, 128, 256)
NETWORKS = {
    **{f"resnet{d}": (lambda d: lambda k: ResNet(d, CIFAR, k))(d) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": lambda k: ResNet(8, WIDE, k), "resnet32x4": lambda k: ResNet(32, WIDE, k),
    "wrn_16_2": lambda k: WideResNet(16, 2, k), "wrn_40_1": lambda k: WideResNet(40, 1, k),
    "wrn_40_2": lambda k: WideResNet(40, 2, k),
    "vgg8": lambda k: VGG(VGG_CONFIGS["vgg8"], k), "vgg13": lambda k: VGG(VGG_CONFIGS["vgg13"], k),
    "mobilenetv2": lambda k: MobileNetV2(6, 0.5, k),
    "shufflenetv1": lambda k: ShuffleNetV1(k), "shufflenetv2": lambda k: ShuffleNetV2(k),
}
