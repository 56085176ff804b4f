"""The accelerator simulator: VTA-compatible counters, a pipelined cycle model, energy and area.

- `program`: the layer's VTA instruction stream (LOAD / GEMM / ALU / STORE with dependencies)
  and the counters VTA's functional simulator reports.
- `event_sim`: executes an instruction stream on load, compute and store modules that
  synchronise through dependency tokens and share one DRAM port.
- `design_sweep`: whole networks over many designs at once, through the mapper and the
  closed-form cost model (both in `codesign.schedules`: lowering's "auto" tiling uses them too).
- `energy`: energy and area from the description's Accelergy-style tables.
- `host`: time of the ops left on the host CPU (their work: `codesign.host_work`).
- `simulate`: a whole model, layer by layer.
"""
