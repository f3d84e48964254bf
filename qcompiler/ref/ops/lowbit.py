"""Quantized and bit-packed IR ops that qcompiler's passes introduce (they are not ONNX ops).

This docstring is the contract between the quantization passes (which build these nodes), the
reference executor (the functions below: the meaning) and the kernels in ``schedules/`` (which must
match the functions below bit for bit).

Bit packing
-----------
* Words are ``uint{word_bits}`` with ``word_bits`` in {8, 16, 32, 64}. Logical element ``c`` of the
  packed axis lives in word ``c // word_bits`` at bit ``c % word_bits`` (LSB first). Bits past the
  logical length are 0.
* Binary ("sign") codes: **bit 1 means -1, bit 0 means +1** (the Larq/LCE convention), so for
  n valid elements ``dot(x, y) = n - 2 * popcount(x ^ y)`` (padding bits are 0 in both operands and
  never count).
* Layouts: 4-D activations are packed NHWC along C: ``[N, H, W, ceil(C/wb)]``; 2-D ones ``[M, ceil(K/wb)]``.
  Conv weights ``[O, KH, KW, ceil((C/groups)/wb)]``; dense weights ``[N, ceil(K/wb)]``.
* k-bit unsigned (bitserial) tensors carry a plane axis right before the packed axis:
  ``[N, H, W, k, Cw]`` or ``[M, k, Kw]``; plane ``i`` holds bit ``i`` of the unsigned code
  (value = sum_i 2^i * plane_i).

Epilogues (attribute ``out`` of every conv/dense op below; extra inputs follow the weights)
--------------------------------------------------------------------------------------------
``acc`` is the exact int32 accumulator of the op. Non-packed outputs are NCHW (conv) or [M, N].
* ``"int32"``: ``y = acc``. No extra inputs.
* ``"float"``: extra inputs ``scale: float32[O]``, ``bias: float32[O]``;
  ``y = float32(acc) * scale[o] + bias[o]`` computed in float32 (multiply, then add; no FMA).
* ``"int8"`` / ``"uint8"``: requantization; attrs ``out_zero_point``, ``out_min``, ``out_max``
  (the clamp range, which also fuses ReLU/ReLU6) and ``requant``:
    - ``"fixed_point"`` (integer-only): extra inputs ``multiplier: int32[O]`` (in [2^30, 2^31)) and
      ``shift: int32[O]`` (total right shift S >= 1):
      ``y = clamp(((int64(acc) * multiplier[o] + 2^(S-1)) >> S) + out_zero_point)``, ``>>`` an
      arithmetic (flooring) shift, i.e. round half toward +inf.
    - ``"float"`` (what onnxruntime does, used for imported QLinear/QDQ models): extra input
      ``scale: float32[O]``; ``y = clamp(rint(float32(acc) * scale[o]) + out_zero_point)``,
      float32 multiply, ``rint`` = round half to even.
* ``"packed"`` (fused sign + bitpack for the next binary layer): extra inputs
  ``threshold: int32[O]``, ``flip: uint8[O]``; bit ``o`` (code -1) is
  ``acc > threshold[o]`` if ``flip[o]`` else ``acc < threshold[o]``; output packed along O with
  attr ``out_word_bits`` (NHWC ``[N, OH, OW, ceil(O/wb)]`` or ``[M, ceil(N/wb)]``).

Ops
---
``QConv2d(x, w, bias?, *epilogue)``: integer conv. x uint8/int8 NCHW, w int8 ``[O, C/g, KH, KW]``,
bias int32[O] or absent. attrs: strides, pads (ONNX order [top, left, bottom, right]), dilations,
groups, x_zero_point (int), w_zero_point (int), out (+ epilogue attrs).
``acc = sum (x - x_zero_point) * (w - w_zero_point) + bias``; padded pixels are real zero (x = zp).

``QDense(x, w, bias?, *epilogue)``: x uint8/int8 ``[M, K]``, w int8 ``[N, K]``, bias int32[N];
attrs x_zero_point, w_zero_point, out (+ epilogue attrs).

``BitPack(x, threshold?)``: attrs mode, word_bits, and bits (mode "unsigned").
* mode ``"sign"``: x float32/int NCHW or [M, K]; bit = ``x < threshold[c]`` (threshold float32[C],
  default 0, so ``x >= 0 -> +1``, the STE convention). Output packed as above (4-D becomes NHWC).
* mode ``"unsigned"``: x integer in ``[0, 2^bits)``; output ``bits`` planes as above.

``BitUnpack(x)``: the inverse of BitPack: attrs mode, channels (logical size of the packed axis),
bits; "sign" gives float32 +-1 in NCHW / [M, K]; "unsigned" gives int32 codes.

``BinaryConv2d(x, w, *epilogue)``: x packed NHWC sign codes, w packed sign weights. attrs:
in_channels, groups, kernel_shape, strides, pads [t, l, b, r], dilations, pad_value in {0, 1, -1}
(the real value of padded pixels: 0 is the float conv's zero padding, which the kernels reproduce
with a correction term; 1 is "one padding", free in the bit domain), out (+ epilogue attrs).
``acc[n, o, oh, ow] = sum over taps and channels of x * w`` with x, w in {-1, +1}.

``BinaryDense(x, w, *epilogue)``: x ``[M, Kw]``, w ``[N, Kw]``; attrs in_features, out.

``BitserialConv2d(x, w, *epilogue)`` / ``BitserialDense(x, w, *epilogue)``: x unsigned k-bit planes
(``act_bits`` planes), w ``weight_bits`` planes of unsigned codes u, decoded as
``w = w_mult * u - w_offset`` (unsigned: 1, 0; offset/ternary: 1, 2^(B-1) or 1; bipolar: 2,
2^B - 1). Conv padding is activation code 0. Same attrs as the binary ops plus act_bits,
weight_bits, w_mult, w_offset. The kernels compute
``acc = w_mult * sum_ij 2^(i+j) popcount(x_i & u_j) - w_offset * sum_i 2^i popcount(x_i)``.

``PackedMaxPool(x)``: max pool of sign codes packed NHWC: a pooled code is -1 only if every tap is
-1, i.e. the bitwise AND of the words over the window. attrs kernel_shape, strides, pads,
dilations; padded taps do not take part (ONNX MaxPool semantics).
"""
