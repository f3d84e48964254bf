"""Small float models for the quantization tests (built with torch, exported with the legacy exporter)."""

import io
import warnings

import numpy as np


def small_cnn_onnx(seed: int = 0, batch: int = 2, size: int = 16) -> bytes:
    """conv-relu-maxpool, a residual conv+add+relu, a strided conv with Clip(0, 6), mean, linear."""
    import torch
    import torch.nn as nn

    torch.manual_seed(seed)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.c2 = nn.Conv2d(8, 8, 3, padding=1)
            self.c3 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            y = torch.max_pool2d(torch.relu(self.c1(x)), 2)
            z = torch.relu(self.c2(y) + y)
            z = torch.clamp(self.c3(z), 0, 6)
            return self.fc(z.mean((2, 3)))

    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Net().eval(), torch.randn(batch, 3, size, size), f, dynamo=False,
                          input_names=["input"], output_names=["logits"], opset_version=17)
    return f.getvalue()


def batches(n: int, shape=(2, 3, 16, 16), seed: int = 0, name: str = "input"):
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def logits_rel_err(g, q, n: int = 3) -> float:
    """Worst max|float - quantized| / max|float| of the ``logits`` output over ``n`` batches."""
    from qcompiler import ref

    worst = 0.0
    for feed in batches(n, seed=7):
        a = ref.run(g, feed)["logits"]
        b = ref.run(q, feed)["logits"]
        worst = max(worst, float(np.abs(a - b).max() / np.abs(a).max()))
    return worst
