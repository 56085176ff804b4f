"""Time of the work left on the host CPU (documented model, priced by the description's [host]).

An op costs a fixed dispatch overhead plus whichever is longer: its arithmetic at
`host.ops_per_cycle`, or its memory traffic at `host.bytes_per_cycle`:

    seconds = overhead + max(ops / (clock * ops_per_cycle), bytes / (clock * bytes_per_cycle))

The work of each op (operations, bytes) is counted by `codesign.host_work` and recorded in the
layer plans.
"""

from __future__ import annotations


def host_seconds(ops: float, nbytes: float, hw) -> float:
    if ops == 0 and nbytes == 0:
        return 0.0
    clock = hw.host_clock_mhz * 1e6
    return hw.host_op_overhead_us * 1e-6 + max(
        ops / (clock * hw.host_ops_per_cycle), nbytes / (clock * hw.host_bytes_per_cycle)
    )
