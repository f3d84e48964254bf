"""Top-1 accuracy of qcompiler's quantization modes on real data, side by side with onnxruntime.

    python benchmarks/accuracy.py [--epochs 30] [--seed 0] [--out DIR]

Data: scikit-learn's 8x8 handwritten digits (1797 images, in the wheel; offline), a fixed
held-out split of 497 test images. Models, trained here with PyTorch (a minute or two on 2 cores):

* a float CNN (Conv-BN-ReLU x3, max pools, two dense layers);
* a binarized CNN trained with the straight-through estimator: first conv and last dense layer in
  float (XNOR-Net / BNN practice), binary weights (``w >= 0 -> +1``) and sign activations
  (``x >= 0 -> +1``, hard-tanh STE) with BatchNorm in between.

Both are exported with the legacy ONNX exporter (float weights, STE patterns kept) and imported
with ``qc.from_onnx``. Every qcompiler row runs the quantized graph on the numpy reference
executor, which defines what the compiled kernels compute bit for bit. onnxruntime's row is
``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations, min-max) on the same float
model and calibration images. The binary row also counts how many test images get the same
prediction as PyTorch (all of them, when the BN + sign thresholds are exact).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

import numpy as np

BATCH = 71  # 497 test images = 7 batches; 284 calibration images = 4 batches


def load_data(seed: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]  # [N, 1, 8, 8] in [0, 1]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    test, train = order[:7 * BATCH], order[7 * BATCH:]
    return x[train], y[train], x[test], y[test]


# -- models -----------------------------------------------------------------------------------------

def float_cnn(torch):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


def binary_cnn(torch):
    nn = torch.nn

    class SignSTE(nn.Module):
        """Forward: +1 if x >= 0 else -1; backward: the hard-tanh straight-through estimator."""

        def forward(self, x):
            xc = x.clamp(-1, 1)
            return xc + (torch.where(x >= 0, 1.0, -1.0) - xc).detach()

    def binary(w):
        return w + (torch.where(w >= 0, 1.0, -1.0) - w).detach()

    class BConv(nn.Conv2d):
        def forward(self, x):
            return nn.functional.conv2d(x, binary(self.weight), None, self.stride, self.padding)

    class BLinear(nn.Linear):
        def forward(self, x):
            return nn.functional.linear(x, binary(self.weight))

    return nn.Sequential(
        nn.Conv2d(1, 64, 3, padding=1), nn.BatchNorm2d(64), SignSTE(),
        BConv(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), SignSTE(), nn.MaxPool2d(2),
        BConv(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), SignSTE(), nn.MaxPool2d(2),
        nn.Flatten(), BLinear(256, 128, bias=False), nn.BatchNorm1d(128), SignSTE(), nn.Linear(128, 10))


def train(torch, model, x, y, epochs: int, lr: float, seed: int):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 32):
            idx = perm[i:i + 32]
            # light augmentation: random 1-pixel shifts
            xb = torch.roll(xt[idx], shifts=tuple(np.random.randint(-1, 2, 2)), dims=(2, 3))
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yt[idx]).backward()
            opt.step()
        sched.step()
    model.eval()
    return model


def export(torch, model, path: str) -> None:
    torch.onnx.export(model, torch.zeros(BATCH, 1, 8, 8), path, dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"])


# -- evaluation -------------------------------------------------------------------------------------

def batches(x):
    return [{"input": x[i:i + BATCH]} for i in range(0, len(x), BATCH)]


def predict_ref(graph, x) -> np.ndarray:
    from qcompiler import ref

    return np.concatenate([ref.run(graph, b)[graph.outputs[0]].argmax(1) for b in batches(x)])


def predict_ort(path: str, x) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, b)[0].argmax(1) for b in batches(x)])


def ort_int8(path: str, calib_x, out_path: str) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches(calib_x))

        def get_next(self):
            return next(self.it, None)

    quantize_static(path, out_path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="directory for the ONNX models (default: a temp dir)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import torch

    import qcompiler as qc
    from qcompiler.quant import QuantConfig, quantize

    torch.set_num_threads(2)
    t0 = time.time()
    xtr, ytr, xte, yte = load_data(args.seed)
    calib = batches(xtr[:4 * BATCH])
    out = args.out or tempfile.mkdtemp(prefix="qc_accuracy_")
    os.makedirs(out, exist_ok=True)

    fmodel = train(torch, float_cnn(torch), xtr, ytr, args.epochs, 3e-3, args.seed)
    bmodel = train(torch, binary_cnn(torch), xtr, ytr, args.epochs, 3e-3, args.seed)
    fpath, bpath, qpath = (os.path.join(out, n) for n in ("float_cnn.onnx", "binary_cnn.onnx", "ort_int8.onnx"))
    export(torch, fmodel, fpath)
    export(torch, bmodel, bpath)
    with torch.no_grad():
        torch_float = fmodel(torch.from_numpy(xte)).argmax(1).numpy()
        torch_binary = bmodel(torch.from_numpy(xte)).argmax(1).numpy()
    train_s = time.time() - t0

    rows = []

    def row(name, pred, note=""):
        rows.append((name, 100.0 * float(np.mean(pred == yte)), note))

    fgraph = qc.from_onnx(fpath)
    row("float (PyTorch)", torch_float)
    row("float (qcompiler reference)", predict_ref(fgraph, xte))
    for method in ("minmax", "percentile", "mse", "kl"):
        cfg = QuantConfig(weights=8, activations=8, calibration=method)
        row(f"qcompiler int8 W8A8, {method}", predict_ref(quantize(fgraph, cfg, calibration=calib), xte),
            "integer-only (fixed-point requant)")
    ort_int8(fpath, xtr[:4 * BATCH], qpath)
    row("onnxruntime quantize_static int8", predict_ort(qpath, xte), "QDQ, per-channel, minmax")
    for cle in (False, True):
        cfg = QuantConfig(weights=4, activations=8, calibration="mse", equalize=cle, bias_correction=cle)
        row(f"qcompiler W4A8{' + CLE + bias corr.' if cle else ''}",
            predict_ref(quantize(fgraph, cfg, calibration=calib), xte), "every layer 4-bit weights")
    cfg = QuantConfig(weights=2, activations=2, keep_first_last=8)
    row("qcompiler W2A2 (bitserial)", predict_ref(quantize(fgraph, cfg, calibration=calib), xte),
        "post-training; first/last layer float")
    cfg = QuantConfig(weights="ternary", activations=8, keep_first_last=8)
    row("qcompiler ternary W (TWN) A8", predict_ref(quantize(fgraph, cfg, calibration=calib), xte),
        "post-training; first/last layer float")

    bgraph = qc.from_onnx(bpath)
    row("binary CNN (PyTorch, STE-trained)", torch_binary)
    bq = quantize(bgraph, QuantConfig(weights=1, activations=1, keep_first_last=8), calibration=calib)
    pred = predict_ref(bq, xte)
    ops = [n.op for n in bq.nodes]
    agree = int(np.sum(pred == torch_binary))
    row("qcompiler binary (packed)", pred,
        f"{ops.count('BinaryConv2d')} BinaryConv2d + {ops.count('BinaryDense')} BinaryDense; "
        f"same prediction as PyTorch on {agree}/{len(yte)} images")

    print(f"\nTop-1 accuracy on {len(yte)} held-out 8x8 digits (sklearn), {len(ytr)} training images; "
          f"training {train_s:.0f} s, total {time.time() - t0:.0f} s\n")
    w = max(len(r[0]) for r in rows)
    print(f"{'model / mode':<{w}}  top-1 %   notes")
    print("-" * (w + 60))
    for name, acc, note in rows:
        print(f"{name:<{w}}  {acc:6.2f}    {note}")


if __name__ == "__main__":
    main()
