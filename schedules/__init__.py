"""Kernel implementations (installed as ``qcompiler.schedules``): TE computes apart from schedules.

Layout
------
* ``kernel.py``: the interface -- :class:`~.kernel.Workload` (op, operand specs, attributes; no
  constant data), :class:`~.kernel.Plan` (the kernel's argument list, incl. constants transformed
  at compile time), :class:`~.kernel.Stages` and :class:`~.kernel.KernelImpl`.
* ``compute.py`` (conv, dense, matmul, pooling, softmax), ``compute_injective.py`` (elementwise,
  data movement, reductions), ``compute_int8.py`` (QConv2d, QDense, QAdd, Quantize/Dequantize):
  portable TE computes, each mirroring a reference op of ``qcompiler/ref/ops``.
* ``templates.py``: schedule templates driven only by config knobs; ``tiling.py``: knob heuristics.
* ``x86/``, ``arm/``, ``riscv/``: per family ``defaults.py`` (the default knobs, which a tuner
  replaces) and the family's own specialised schedules.
* ``impls.py``: kernel *kinds* = (plan, compute, schedule) and ``get_impl(kind, family)``.
* ``select.py``: the ONE selection table, ``RULES``: (predicate, kind, reason) rows, first match
  wins; ``LIMITS`` gives the message for what is unsupported on purpose.

Adding a kernel (e.g. a fast int8 or a binary conv)
---------------------------------------------------
1. Write the compute ``fn(workload, plan, config) -> Stages`` in a ``compute_*.py`` (name the
   stages the schedule needs in ``Stages.named``) and, if it wants its own argument list or
   constant layout, a plan ``fn(workload, config) -> Plan`` (``Arg("const", i, spec, tag,
   transform)`` pre-packs input ``i`` at compile time; put the layout knobs into ``tag``).
2. Write the schedule ``fn(sch, stages, workload, target, config)`` in ``schedules/<family>/`` and
   the default knobs in that family's ``defaults.py`` (``defaults(kind, workload, target)``).
3. Either add the kind to ``impls.KINDS`` (shared template, family defaults) or register a
   family-specific implementation::

       from qcompiler.schedules.impls import register
       from qcompiler.schedules.kernel import KernelImpl
       register(KernelImpl("bconv2d_nhwc__x86_avx512", plan, compute, schedule, defaults),
                kind="bconv2d_nhwc", family="x86")

4. Add a row to ``select.RULES`` *above* the generic rule it beats, with the reason::

       Rule("bconv2d_nhwc", all_of(op_is("BinaryConv2d"), has_feature("vpopcntdq")),
            "AVX-512 VPOPCNTDQ popcount on 512-bit words"),

   Predicates see the workload and the target (``target.features`` / ``target.family``), never a
   board name. A row with ``fallback="why"`` is logged and recorded per layer as a fallback.
5. Test it against the reference executor in ``tests/test_schedules_*.py`` (bit-exact for
   integers), with ``tests/lowering_helpers.check_op``.
"""
