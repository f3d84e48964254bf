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
   reproduce bit for bit) predicts exactly what PyTorch predicts.
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
    with torch.no_grad():
        theirs = model(torch.from_numpy(xte)).argmax(1).numpy()
    result = {"accuracy": float(np.mean(ours == yte)), "agree": int(np.sum(ours == theirs)), "images": len(yte),
              "ops": [n.op for n in qgraph.nodes]}
    print(f"top-1 {100 * result['accuracy']:.2f} %; same prediction as PyTorch on "
          f"{result['agree']}/{result['images']} images")
    if result["agree"] != result["images"] or "BinaryConv2d" not in result["ops"]:
        raise SystemExit("the packed binary graph does not reproduce PyTorch's predictions")
    return result


if __name__ == "__main__":
    main()
