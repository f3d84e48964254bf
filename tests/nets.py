"""Whole networks written in PyTorch for end-to-end tests: a ResNet-18, a MobileNetV2 and an MLP.

Weights are random (``torch.manual_seed``) and BatchNorm statistics are randomised too, so BN is not
the identity; every network is in eval mode (BN in inference, dropout off). ``export_onnx`` writes a
network to ONNX in a given directory with either the legacy TorchScript exporter (``dynamo=False``,
opset 17) or the default dynamo exporter, and returns the path. ``tests/conftest.py`` wraps it in a
session-scoped fixture (``torch_net_onnx``) that caches the files, so several test modules can
compile the same networks without exporting them twice.

    >>> path = export_onnx("resnet18", tmp_dir)          # doctest: +SKIP
    >>> graph = qc.from_onnx(path)                        # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17


# ------------------------------------------------------------------------------------------------
# the networks (torch is imported lazily so that importing this file costs nothing)


def _randomize_batchnorm(model, generator) -> None:
    """Give every BatchNorm non-trivial affine parameters and running statistics."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(c, generator=generator))
                m.bias.copy_(0.2 * torch.randn(c, generator=generator))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(c, generator=generator))


def build_resnet18(seed: int = 0, width: int = 64, num_classes: int = 10):
    """ResNet-18: 7x7/2 conv stem + 3x3/2 maxpool, BasicBlock stages [2, 2, 2, 2] with channels
    ``width * (1, 2, 4, 8)`` (64..512 by default), stride-2 downsampling with 1x1 conv + BN
    projection shortcuts, global average pool, fc."""
    import torch
    import torch.nn as nn

    torch.manual_seed(seed)

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                nn.BatchNorm2d(cout))

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            shortcut = x if self.downsample is None else self.downsample(x)
            return torch.relu(y + shortcut)

    class ResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            layers, cin = [], width
            for stage, blocks in enumerate((2, 2, 2, 2)):
                cout = width * 2 ** stage
                for b in range(blocks):
                    layers.append(BasicBlock(cin, cout, 2 if (b == 0 and stage > 0) else 1))
                    cin = cout
            self.layers = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(cin, num_classes)

        def forward(self, x):
            x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
            x = self.avgpool(self.layers(x))
            return self.fc(torch.flatten(x, 1))

    model = ResNet18()
    _randomize_batchnorm(model, torch.Generator().manual_seed(seed + 1))
    return model.eval()


#: MobileNetV2's inverted-residual table: (expansion t, output channels c, repeats n, first stride s)
MOBILENETV2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                        (6, 160, 3, 2), (6, 320, 1, 1))


def build_mobilenetv2(seed: int = 0, num_classes: int = 10):
    """MobileNetV2 (width 1.0): 3x3/2 stem, inverted residuals (1x1 expand x6, depthwise 3x3, linear
    1x1 bottleneck, residual add when shapes match), ReLU6 (exported as Clip), 1x1 conv to 1280,
    global average pool, dropout (inactive in eval), linear."""
    import torch
    import torch.nn as nn

    torch.manual_seed(seed)

    def conv_bn_relu6(cin, cout, k, stride, groups=1):
        return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU6())

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            hidden = cin * expand
            layers = [] if expand == 1 else [conv_bn_relu6(cin, hidden, 1, 1)]
            layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),  # depthwise
                       nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]  # linear bottleneck
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            y = self.body(x)
            return x + y if self.residual else y

    class MobileNetV2(nn.Module):
        def __init__(self):
            super().__init__()
            layers, cin = [conv_bn_relu6(3, 32, 3, 2)], 32
            for t, c, n, s in MOBILENETV2_SETTINGS:
                for i in range(n):
                    layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                    cin = c
            layers.append(conv_bn_relu6(cin, 1280, 1, 1))
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

        def forward(self, x):
            x = self.features(x).mean((2, 3))
            return self.classifier(x)

    model = MobileNetV2()
    _randomize_batchnorm(model, torch.Generator().manual_seed(seed + 1))
    return model.eval()


def build_mlp(seed: int = 0, in_shape: Tuple[int, ...] = (1, 28, 28), hidden=(256, 128),
              num_classes: int = 10):
    """Flatten, then Linear + ReLU per hidden width, then a Linear classifier."""
    import torch
    import torch.nn as nn

    torch.manual_seed(seed)
    layers, cin = [nn.Flatten()], int(np.prod(in_shape))
    for h in hidden:
        layers += [nn.Linear(cin, h), nn.ReLU()]
        cin = h
    layers.append(nn.Linear(cin, num_classes))
    return nn.Sequential(*layers).eval()


@dataclass(frozen=True)
class NetSpec:
    """A network and the input shape it is exported with."""

    build: Callable
    input_shape: Tuple[int, ...]


#: the networks by name; input sizes are reduced from ImageNet's 224 so that tests stay fast.
NETS: Dict[str, NetSpec] = {
    "resnet18": NetSpec(build_resnet18, (1, 3, 64, 64)),
    "mobilenetv2": NetSpec(build_mobilenetv2, (1, 3, 64, 64)),
    "mlp": NetSpec(build_mlp, (4, 1, 28, 28)),
}


# ------------------------------------------------------------------------------------------------
# export and inputs


def build(name: str, seed: int = 0):
    """The eval-mode torch module of network ``name`` (one of :data:`NETS`)."""
    if name not in NETS:
        raise KeyError(f"unknown network {name!r}; known: {sorted(NETS)}")
    return NETS[name].build(seed=seed)


def sample_input(name: str, seed: int = 0) -> np.ndarray:
    """A standard-normal float32 input of network ``name``'s export shape."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal(NETS[name].input_shape).astype(np.float32)


def onnx_file_name(name: str, dynamo: bool = False, keep_batchnorm: bool = False) -> str:
    return f"{name}{'_dynamo' if dynamo else ''}{'_bn' if keep_batchnorm else ''}.onnx"


def export_onnx(name: str, directory, dynamo: bool = False, keep_batchnorm: bool = False,
                seed: int = 0) -> Path:
    """Export network ``name`` into ``directory`` and return the path of the .onnx file.

    ``dynamo=False`` uses the legacy TorchScript exporter at opset 17; ``dynamo=True`` the default
    torch.export-based exporter (needs onnxscript), which picks its own opset. Both exporters fold
    eval-mode BatchNorm into the preceding Conv; ``keep_batchnorm=True`` (legacy exporter only)
    exports with ``TrainingMode.PRESERVE`` instead, so the file holds explicit inference-mode
    ``BatchNormalization`` nodes. The single input is named ``input`` and the output ``logits``, with
    static shapes.
    """
    import torch

    if dynamo and keep_batchnorm:
        raise ValueError("keep_batchnorm needs the legacy exporter (dynamo=False)")
    model = build(name, seed=seed)
    example = torch.from_numpy(sample_input(name, seed=seed))
    path = Path(directory) / onnx_file_name(name, dynamo, keep_batchnorm)
    os.makedirs(path.parent, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter (TracerWarning, deprecation notes)
        if dynamo:
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], verbose=False)
            program.save(str(path))
        else:
            # PRESERVE exports the module in the mode it is in (eval) without the Conv+BN fusion
            training = torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=OPSET,
                              training=training, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    return path


def torch_output(name: str, x: np.ndarray, seed: int = 0) -> np.ndarray:
    """Network ``name``'s output on ``x``, computed by PyTorch itself."""
    import torch

    with torch.no_grad():
        return build(name, seed=seed)(torch.from_numpy(x)).numpy()
