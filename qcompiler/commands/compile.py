"""``qcompiler compile``: ONNX model -> (quantize) -> native module directory."""

from __future__ import annotations

import logging
import os

from qcompiler.commands.common import (add_model_arguments, add_quant_arguments, load_npz_batches,
                                       parse_input_shapes)

log = logging.getLogger("qcompiler.compile")


def add_arguments(p):
    add_model_arguments(p)
    add_quant_arguments(p)
    p.add_argument("--target", default="host", help="target name (see `qcompiler targets`; default host)")
    p.add_argument("-o", "--output", required=True, help="module directory to write")
    p.add_argument("--name", default=None, help="module name (C identifier; default from the model)")
    p.add_argument("--weights", default="embedded", choices=["embedded", "blob"],
                   help="embed the weights in the library, or write them to weights.bin")
    p.add_argument("--tuning-log", default=None, help="JSONL tuning log to take schedule configs from")


def build_graph(args):
    """Import and (if asked) quantize the model named by the arguments."""
    import qcompiler as qc

    graph = qc.from_onnx(args.model, input_shapes=parse_input_shapes(args.input_shape))
    if args.wbits is None and args.abits is None:
        if args.calib:
            log.warning("--calib given without --wbits/--abits: the model stays float")
        return graph
    wbits = args.wbits if args.wbits is not None else 8
    wbits = wbits if str(wbits) == "ternary" else int(wbits)
    abits = args.abits if args.abits is not None else 8
    cfg = qc.QuantConfig(weights=wbits, activations=abits, per_channel=not args.per_tensor,
                         calibration=args.method)
    batches = load_npz_batches(args.calib) if args.calib else None
    # the compile target is known here: low-bit layers get its packing word width
    return qc.quantize(graph, cfg, calibration=batches, target=args.target)


def run(args):
    import qcompiler as qc

    graph = build_graph(args)
    name = args.name or os.path.basename(os.path.normpath(args.output)).replace("-", "_") or None
    module = qc.compile(graph, target=args.target, name=name, weights=args.weights, tuning=args.tuning_log)
    module.export(args.output)
    print(f"wrote {args.output} (target {module.target_name})")
    return 0
