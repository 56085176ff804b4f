"""The accelerator simulator: VTA-compatible counters, a pipelined cycle model, energy and area.

- `schedule_walk`: reads a layer's scheduled TIR (the kernel the deployable module runs) into
  `ScheduleFacts`: output tiles, reduction steps, load windows, micro-op kernel loop nests.
- `program`: the layer's VTA instruction stream (LOAD / GEMM / ALU / STORE with dependencies)
  and the counters VTA's functional simulator reports.
- `event_sim`: executes an instruction stream on load, compute and store modules that
  synchronise through dependency tokens and share one DRAM port.
- `analytic`: the same cycle model in closed form, vectorised over many designs for the tuner.
- `energy`: energy and area from the description's Accelergy-style tables.
- `host`: time of the ops left on the host CPU.
- `simulate`: a whole model, layer by layer.
"""
