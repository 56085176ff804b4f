"""The accelerator simulator: VTA-compatible counters, a pipelined cycle model, energy and area.

A layer's instruction stream and its two cycle models live with the schedules
(`codesign.schedules`: `program`, `event_sim`, `cost_model`), because the mapper's "auto" tiling,
which lowering uses too, times candidates with them. Here they are applied to whole models:

- `design_sweep`: whole networks over many designs at once, through the mapper and the
  closed-form cost model, and under "auto" the event simulation of each layer's chosen tiling.
- `energy`: energy and area from the description's Accelergy-style tables.
- `host`: time of the ops left on the host CPU (their work: `codesign.host_work`).
- `simulate`: a whole model, layer by layer.
"""
