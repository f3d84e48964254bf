"""Tiny graph builders for the pass tests (IR directly, no ONNX round trip)."""

import numpy as np

from qcompiler.ir import Graph, Node, Value
from qcompiler.ref import infer_outputs


class Builder:
    def __init__(self, name="t", seed=0):
        self.g = Graph(name)
        self.rng = np.random.default_rng(seed)
        self.count = 0

    def input(self, name, shape, dtype="float32"):
        self.g.add_value(Value(name, shape, dtype))
        self.g.inputs.append(name)
        return name

    def const(self, data):
        self.count += 1
        name = f"c{self.count}"
        self.g.add_const(name, np.asarray(data))
        return name

    def node(self, op, inputs, **attrs):
        self.count += 1
        name = f"{op.lower()}{self.count}"
        descr = [None if not i else (self.g.values[i].shape, self.g.values[i].dtype, self.g.values[i].data)
                 for i in inputs]
        (shape, dtype) = infer_outputs(op, descr, attrs, name)[0]
        self.g.add_value(Value(name + "_out", shape, dtype))
        self.g.add_node(Node(op, name, list(inputs), [name + "_out"], attrs))
        return name + "_out"

    def conv(self, x, out_ch, k=3, pad=1, groups=1, bias=True, weights=None, stride=1):
        c = self.g.values[x].shape[1]
        w = weights if weights is not None else self.rng.normal(size=(out_ch, c // groups, k, k)).astype(np.float32)
        ins = [x, self.const(w)]
        if bias:
            ins.append(self.const(self.rng.normal(size=out_ch).astype(np.float32)))
        return self.node("Conv", ins, kernel_shape=(k, k), strides=(stride, stride), pads=(pad,) * 4,
                         dilations=(1, 1), group=groups)

    def bn(self, x, mean_shift=0.0):
        c = self.g.values[x].shape[1]
        r = self.rng
        p = [r.normal(size=c) * 1.5, r.normal(size=c), r.normal(size=c) * 2 + mean_shift, r.uniform(0.5, 3, c)]
        return self.node("BatchNormalization", [x] + [self.const(a.astype(np.float32)) for a in p],
                         epsilon=1e-5, momentum=0.9, training_mode=0)

    def gemm(self, x, n, bias=True):
        k = self.g.values[x].shape[1]
        ins = [x, self.const(self.rng.normal(size=(n, k)).astype(np.float32) / np.sqrt(k))]
        if bias:
            ins.append(self.const(self.rng.normal(size=n).astype(np.float32)))
        return self.node("Gemm", ins, alpha=1.0, beta=1.0, transA=0, transB=1)

    def done(self, *outputs):
        self.g.outputs.extend(outputs)
        self.g.verify()
        return self.g
