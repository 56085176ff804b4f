"""Tensorize schedules that map GEMM work onto a VTA-style core.

- `gemm_intrin`: the GEMM tensor intrinsic built from a core shape (batch x block_in x block_out).
- `tiling`: the rule that picks tile sizes fitting the scratchpads with the least DRAM traffic.
- `packed_conv2d`: the packed-layout conv2d kernel (dense / matmul are 1x1 convs over rows),
  its schedule (scratchpad scopes, requantization in the accumulator, tensorize), and the
  measurement of the scratchpad footprint of the scheduled TIR.
"""
