"""Regenerates the example model shipped with qcompiler (run from the repo root; needs torch).

``digits_mlp.onnx``: a 64-128-128-10 MLP (ReLU) trained on scikit-learn's 8x8 digits, input
``input`` float32[1, 64] scaled to [0, 1]. ``digits_calib.npz``: 64 training images for calibration
(key ``input``, shape [64, 1, 64]: one batch per leading index). ``digit.npy``: one test image.
"""

import os

import numpy as np


def main(out_dir: str = os.path.dirname(os.path.abspath(__file__))) -> None:
    import torch
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    train, test = order[:1400], order[1400:]
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
                                torch.nn.ReLU(), torch.nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    for _ in range(60):
        for i in range(0, len(train), 64):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[i:i + 64]), yt[i:i + 64])
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = (model(torch.from_numpy(x[test])).argmax(1).numpy() == y[test]).mean()
    print(f"test accuracy {acc:.4f}")
    torch.onnx.export(model, torch.zeros(1, 64), os.path.join(out_dir, "digits_mlp.onnx"),
                      input_names=["input"], output_names=["logits"], opset_version=17, dynamo=False)
    np.savez(os.path.join(out_dir, "digits_calib.npz"), input=x[train[:64]].reshape(64, 1, 64))
    np.save(os.path.join(out_dir, "digit.npy"), x[test[:1]])


if __name__ == "__main__":
    main()
