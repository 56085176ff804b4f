"""Tensorize schedules that map GEMM work onto a VTA-style core, and the mapper that tiles them.

- `layer`: a GEMM layer's geometry (a grouped, padded, strided conv2d; dense and matmul as 1x1).
- `gemm_intrin`: the GEMM tensor intrinsic built from a core shape (batch x block_in x block_out).
- `tiling`: what a tiling is, one tile's scratchpad footprint, and whether it fits.
- `tile_geometry`: where a tiling's tiles lie (tile counts, steps, input windows).
- `cost_model`: a tiling's features, VTA counters and cycles in closed form, vectorised.
- `program`: a tiled layer's VTA instruction stream (LOAD / GEMM / ALU / STORE with dependency
  tokens) and the counters VTA's functional simulator reports.
- `event_sim`: runs an instruction stream on load, compute and store modules that synchronise
  through dependency tokens and share one DRAM port (the event-level cycle model).
- `mapper`: which tiling a layer gets on a design ("rule": the tile rule, "auto": of the cost
  model's best three, the fastest by the event simulation), for one design or many at once.
- `packed_conv2d`: the packed-layout conv2d kernel (dense / matmul are 1x1 convs over rows),
  its schedule (scratchpad scopes, requantization in the accumulator, tensorize), and the
  measurement of the scratchpad footprint of the scheduled TIR.
"""
