"""Code generation: lowering to TVM kernels, the AOT executor, packaging."""
