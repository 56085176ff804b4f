"""Energy and area from the description's Accelergy-style tables ([energy], [area]).

Actions per layer, from the VTA counters and the cycle count:
- MAC: every GEMM micro-op fires the core's batch x block_in x block_out multipliers (padding
  included), each priced by `mac_energy_pj` (an int4 layer on a precision-scalable core does two
  MACs per firing); "mac_scaling" is what precision-scalable multipliers add to plain ones;
- input / weight scratchpads: written by their loads, read once per GEMM micro-op (an element of
  the core as the layer uses it: `for_layer_weights`);
- accumulator: read and written by every GEMM micro-op, reset and ALU op, written by operand
  loads, read by the store;
- micro-op buffer: written by micro-op loads, read by every GEMM and ALU micro-op (4 B);
- ALU: batch x block_out lanes per vector op;
- DRAM: every byte moved; leakage: every cycle.
"""

from __future__ import annotations

from codesign.hardware import mac_energy_pj
from codesign.schedules.tiling import UOP_BYTES


def layer_energy_pj(
    counters: dict[str, int], reset_elements: int, cycles: float, hw, layer_core=None
) -> dict[str, float]:
    """Energy by action of a layer on `hw` (a description, or columns of designs), whose micro-ops
    read elements of `layer_core`: the core as the layer uses it (`hw.for_layer_weights`; `hw`
    itself by default)."""
    core = hw if layer_core is None else layer_core
    gemm, alu = counters["gemm_counter"], counters["alu_counter"]
    firings = gemm * hw.macs_per_cycle
    out_elements = counters["out_store_nbytes"] // hw.out_elem_bytes
    acc_accesses = (2 * gemm + reset_elements + 2 * alu + out_elements) * hw.acc_elem_bytes + counters[
        "acc_load_nbytes"
    ]
    dram_bytes = sum(
        counters[k]
        for k in ("inp_load_nbytes", "wgt_load_nbytes", "acc_load_nbytes", "uop_load_nbytes", "out_store_nbytes")
    )
    parts = {
        "mac": firings * hw.energy_mac_pj,
        "mac_scaling": firings * (mac_energy_pj(hw) - hw.energy_mac_pj),
        "inp_sram": (counters["inp_load_nbytes"] + gemm * core.inp_elem_bytes) * hw.energy_inp_pj_per_byte,
        "wgt_sram": (counters["wgt_load_nbytes"] + gemm * core.wgt_elem_bytes) * hw.energy_wgt_pj_per_byte,
        "acc_sram": acc_accesses * hw.energy_acc_pj_per_byte,
        "uop_sram": (counters["uop_load_nbytes"] + (gemm + alu) * UOP_BYTES) * hw.energy_uop_pj_per_byte,
        "alu": alu * hw.batch * hw.block_out * hw.energy_alu_op_pj,
        "dram": dram_bytes * hw.energy_dram_pj_per_byte,
        "leakage": cycles * hw.energy_leakage_pj_per_cycle,
    }
    return {**parts, "total": sum(parts.values())}


def energy_by_stage_pj(
    counters: dict[str, int], reset_elements: int, cycles: float, hw, layer_core=None
) -> dict[str, float]:
    """The same energy by pipeline stage: load (DRAM reads and the scratchpad writes they make),
    store (accumulator reads and DRAM writes of the outputs), static (leakage) and compute
    (everything else: MACs, the GEMM's and ALU's scratchpad traffic)."""
    parts = layer_energy_pj(counters, reset_elements, cycles, hw, layer_core)
    loads = {
        "inp_load_nbytes": hw.energy_inp_pj_per_byte,
        "wgt_load_nbytes": hw.energy_wgt_pj_per_byte,
        "acc_load_nbytes": hw.energy_acc_pj_per_byte,
        "uop_load_nbytes": hw.energy_uop_pj_per_byte,
    }
    load = sum(counters[k] * (hw.energy_dram_pj_per_byte + pj) for k, pj in loads.items())
    out_elements = counters["out_store_nbytes"] // hw.out_elem_bytes
    store = (
        counters["out_store_nbytes"] * hw.energy_dram_pj_per_byte
        + out_elements * hw.acc_elem_bytes * hw.energy_acc_pj_per_byte
    )
    static = parts["leakage"]
    return {"load": load, "compute": parts["total"] - load - store - static, "store": store, "static": static}
