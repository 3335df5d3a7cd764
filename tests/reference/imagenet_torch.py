"""The ImageNet networks in PyTorch: torchvision's own ResNets, read through forward hooks, and mdistiller's
MobileNetV1 restated (`mdistiller/models/imagenet/mobilenetv1.py`). `forward` returns `(logits, {role: tensor})`
with kdjax's role names. Only `make_imagenet_reference.py` imports this (torch is not a test dependency).

The fixture's images are 32x32 (ResNets: 8x8 after the stem, 1x1 at the last stage), so MobileNetV1's
`AvgPool2d(7)`, the global average of its 7x7 map at 224 pixels, is taken as the global average here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn


class Tapped(nn.Module):
    """A torchvision ResNet whose stages, pre-activations (the last block's sum, before its final ReLU) and pooled
    vector are returned beside the logits."""

    def __init__(self, make, num_classes):
        super().__init__()
        self.net = make(num_classes=num_classes)
        self._inputs = {}
        for stage in range(1, 5):
            last = getattr(self.net, f"layer{stage}")[-1]
            last.relu.register_forward_pre_hook(self._keeper(f"preact{stage}"))

    def _keeper(self, role):
        def keep(module, inputs):
            self._inputs[role] = inputs[0].clone()  # the block's final ReLU sees the sum last (in place: clone)
        return keep

    def state_dict(self, *args, **kwargs):
        return self.net.state_dict(*args, **kwargs)

    def load_state_dict(self, state, *args, **kwargs):
        return self.net.load_state_dict(state, *args, **kwargs)

    def forward(self, x):
        net, roles = self.net, {}
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        for stage in range(1, 5):
            x = getattr(net, f"layer{stage}")(x)
            roles[f"stage{stage}"] = x
            roles[f"preact{stage}"] = self._inputs[f"preact{stage}"]
        roles["pooled"] = torch.flatten(net.avgpool(x), 1)
        return net.fc(roles["pooled"]), roles


def _conv_bn(inp, oup, stride):
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True))


def _conv_dw(inp, oup, stride):
    return nn.Sequential(nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp),
                         nn.ReLU(inplace=True), nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup),
                         nn.ReLU(inplace=True))


class MobileNetV1(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        widths = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2),
                  *[(512, 512, 1)] * 5, (512, 1024, 2), (1024, 1024, 1)]
        self.model = nn.Sequential(_conv_bn(3, 32, 2), *[_conv_dw(*w) for w in widths], nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x):
        roles, feat = {}, self.model[0](x)
        for stage, (first, last) in enumerate(((1, 3), (4, 5), (6, 11), (12, 13)), start=1):
            feat = self.model[first:last](feat)
            preact = self.model[last][:-1](feat)
            feat = F.relu(preact)
            roles[f"preact{stage}"], roles[f"stage{stage}"] = preact, feat
        roles["pooled"] = self.model[14](feat).reshape(-1, 1024)
        return self.fc(roles["pooled"]), roles


NETWORKS = {"resnet18": lambda k: Tapped(torchvision.models.resnet18, k),
            "resnet34": lambda k: Tapped(torchvision.models.resnet34, k),
            "resnet50": lambda k: Tapped(torchvision.models.resnet50, k),
            "mobilenetv1": lambda k: MobileNetV1(k)}
