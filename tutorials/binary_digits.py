"""Walkthrough: a binarized CNN from PyTorch to packed binary ops, exactly.

    python tutorials/binary_digits.py [--epochs 8] [--out DIR]

1. Train a small binary CNN on scikit-learn's 8x8 digits with the straight-through estimator
   (sign activations ``x >= 0 -> +1``, binary weights, BatchNorm between; first conv and last
   dense layer in float, as in XNOR-Net).
2. Export it with the legacy ONNX exporter (keeps the STE pattern GreaterOrEqual/Where/Sub/Add).
3. ``qc.from_onnx`` + ``qc.quantize(..., QuantConfig(weights=1, activations=1, keep_first_last=32))``
   (first and last layer kept float, so the result is exact; ``keep_first_last=8`` makes them int8,
   faster, with the same accuracy on ``benchmarks/accuracy.py``'s binary CNN but not the same
   prediction on every image): the binarize pass recognises the STE pattern, the binary layers
   become BinaryConv2d / BinaryDense on packed bits, and bitpack folds each BatchNorm + sign into an exact integer
   threshold, so consecutive binary layers exchange packed words (PackedMaxPool in between).
4. Check on held-out images that the reference executor (the semantics the compiled kernels
   reproduce bit for bit) predicts what PyTorch predicts on every image, except that an image with
   a sign input within float32 rounding (1e-5) of 0 may differ (PyTorch's float BatchNorm can round
   it to either sign; training is not bit-deterministic, so a few such images appear in some runs).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="binary CNN walkthrough")
    ap.add_argument("--epochs", type=int, default=2 if os.environ.get("QC_TUTORIAL_FAST") else 8)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch

    import qcompiler as qc
    from qcompiler import ref
    from accuracy import BATCH, batches, binary_cnn, export, load_data, train  # the benchmark's models

    torch.set_num_threads(2)
    xtr, ytr, xte, yte = load_data(seed=0)
    model = train(torch, binary_cnn(torch), xtr, ytr, args.epochs, 3e-3, seed=0)       # step 1
    out = args.out or tempfile.mkdtemp(prefix="qc_tutorial_")
    path = os.path.join(out, "binary_cnn.onnx")
    export(torch, model, path)                                                          # step 2

    graph = qc.from_onnx(path)                                                          # step 3
    cfg = qc.QuantConfig(weights=1, activations=1, keep_first_last=32)
    qgraph = qc.quantize(graph, cfg, calibration=batches(xtr[:BATCH]))
    print(qgraph)

    ours = np.concatenate([ref.run(qgraph, b)[qgraph.outputs[0]].argmax(1) for b in batches(xte)])  # step 4
    theirs, ties = torch_predictions(torch, model, xte)
    same = ours == theirs
    result = {"accuracy": float(np.mean(ours == yte)), "agree": int(np.sum(same)), "images": len(yte),
              "ties": int(np.sum(ties)), "ops": [n.op for n in qgraph.nodes]}
    print(f"top-1 {100 * result['accuracy']:.2f} %; same prediction as PyTorch on "
          f"{result['agree']}/{result['images']} images ({result['ties']} with a sign input within float "
          f"rounding of 0)")
    if not np.all(same | ties) or "BinaryConv2d" not in result["ops"]:
        raise SystemExit("the packed binary graph does not reproduce PyTorch's predictions")
    return result


def torch_predictions(torch, model, x, tie: float = 1e-5):
    """PyTorch's predictions, and which images have a sign input within ``tie`` of 0.

    The integer graph folds BatchNorm + sign into exact thresholds; PyTorch computes BN in float32,
    so a pre-activation within rounding of 0 may take either sign there. Only such images may
    differ, and few models have any.
    """
    closest = np.full(len(x), np.inf)

    def record(module, inputs, output):
        a = inputs[0].detach().abs().reshape(len(x), -1).min(1).values.numpy()
        np.minimum(closest, a, out=closest)

    hooks = [m.register_forward_hook(record) for m in model.modules() if type(m).__name__ == "SignSTE"]
    try:
        with torch.no_grad():
            pred = model(torch.from_numpy(x)).argmax(1).numpy()
    finally:
        for h in hooks:
            h.remove()
    return pred, closest < tie


if __name__ == "__main__":
    main()
