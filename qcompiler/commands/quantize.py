"""``qcompiler quantize``: ONNX model -> quantized IR written as a ``.qir`` file.

    qcompiler quantize model.onnx --wbits 4 --abits 8 --calib data.npz [--method kl] -o q.qir
"""

from __future__ import annotations

import logging

from qcompiler.commands.common import (add_model_arguments, add_quant_arguments, load_npz_batches,
                                       parse_input_shapes)
from qcompiler.errors import ConfigError

log = logging.getLogger("qcompiler.quantize")


def add_arguments(p):
    add_model_arguments(p)
    add_quant_arguments(p)
    g = p.add_argument_group("more quantization options")
    g.add_argument("--per-channel", action="store_true", help="per-channel weight scales (the default)")
    g.add_argument("--percentile", type=float, default=99.99, help="percentile for --method percentile")
    g.add_argument("--keep-first-last", type=int, default=None, metavar="BITS",
                   help="weight bits of the first and last layers")
    g.add_argument("--mode", default="static", choices=["static", "dynamic", "float16"],
                   help="static (calibrated integer), dynamic (weights only) or float16")
    g.add_argument("--target", default=None,
                   help="the target the .qir will be compiled for: binary/bitserial layers are packed in its "
                        "word width (64-bit on x86-64/aarch64/riscv64); default 32-bit words, which every "
                        "target runs")
    g.add_argument("--fold-qdq", action="store_true",
                   help="the model is already quantized (QDQ/QLinear): fold it into integer ops instead")
    p.add_argument("-o", "--output", required=True, help=".qir file to write")


def config_from_args(args):
    """The QuantConfig the command-line flags describe."""
    import qcompiler as qc

    if args.per_channel and args.per_tensor:
        raise ConfigError("--per-channel and --per-tensor contradict each other")
    wbits = args.wbits if args.wbits is not None else 8
    if str(wbits) != "ternary":
        try:
            wbits = int(wbits)
        except ValueError:
            raise ConfigError(f"--wbits must be 1..8 or 'ternary', got {wbits!r}") from None
    abits = args.abits if args.abits is not None else 8
    return qc.QuantConfig(weights=wbits, activations=abits, per_channel=not args.per_tensor,
                          calibration=args.method, percentile=args.percentile,
                          keep_first_last=args.keep_first_last, mode=args.mode)


def run(args):
    import qcompiler as qc
    from qcompiler.ir.serialize import save

    graph = qc.from_onnx(args.model, input_shapes=parse_input_shapes(args.input_shape))
    if args.fold_qdq:
        from qcompiler.passes.fold_qdq import fold_qdq

        qgraph = fold_qdq(graph)
    else:
        cfg = config_from_args(args)
        batches = load_npz_batches(args.calib) if args.calib else None
        qgraph = qc.quantize(graph, cfg, calibration=batches, target=args.target)
    save(qgraph, args.output)
    ops = {}
    for n in qgraph.nodes:
        ops[n.op] = ops.get(n.op, 0) + 1
    print(f"wrote {args.output}: {len(qgraph.nodes)} nodes ("
          + ", ".join(f"{k} x{v}" for k, v in sorted(ops.items())) + ")")
    return 0
