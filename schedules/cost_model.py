"""The cost model: a tiling's features, the VTA counters they imply, and cycles in closed form,
vectorised with numpy (many tilings and designs per call). The mapper ranks tilings with it
("auto" mode), the design sweep prices designs with it, and it is the simulator's analytic model.

`tiling_features` reduces a layer, its tilings and a core to per-tile and per-step quantities
(bytes, transfers, micro-ops); `vta_counters` turns them into VTA fsim's counters; `estimate`
turns them into cycles by solving the pipeline of `simulator.event_sim` in steady state. The
virtual threads' tiles run in rounds:

    cycles = fill + (rounds - 2) * period + period into the last round + drain

- fill: the micro-op loads and the first input/weight load;
- period: the longest of the dependency chain of a round (single buffering alternates load
  and GEMM; double buffering hides the next round's loads behind this round's GEMMs, ALU and
  reset), each module's busy time, the store chain (a thread's next reset waits for its store
  on the in-order compute module), the stores' wait for the DRAM port while the next round's
  first loads hold it (double buffering), and the DRAM port's busy time;
- the last round holds fewer tiles than threads when the threads do not divide the tiles:
  the period into it and the drain count its tiles;
- drain: the last round's GEMMs, ALU ops and stores;
- never less than the DRAM port's or the GEMM core's total busy time.
"""

from __future__ import annotations

import types

import numpy as np

from codesign.schedules.layer import ConvShape
from codesign.schedules.tile_geometry import input_cols_inside, input_rows_inside, tile_counts
from codesign.schedules.tiling import UOP_BYTES, Tiling, gemm_loop_nest, kernel_uops, reset_loop_nest

BYTE_COUNTERS = ("inp_load_nbytes", "wgt_load_nbytes", "acc_load_nbytes", "uop_load_nbytes", "out_store_nbytes")


def tiling_features(shape: ConvShape, hw, tilings: dict[str, np.ndarray], alu_ops) -> dict[str, np.ndarray]:
    """Features of one layer under arrays of tilings (n_tile, co_tile, ci_tile, h_tile, w_tile,
    virtual_threads); `hw` gives the core shape and bit widths, `alu_ops` the ALU program."""
    n, co, ci, h, w, vt = (
        np.asarray(tilings[k]) for k in ("n_tile", "co_tile", "ci_tile", "h_tile", "w_tile", "virtual_threads")
    )
    tile = Tiling(n, co, ci, h, w, vt)
    counts = tile_counts(shape, tile, hw)
    rows_inside = input_rows_inside(shape, tile, hw).sum(axis=-1)
    cols_inside = input_cols_inside(shape, tile, hw).sum(axis=-1)
    acc_elements = n * co * h * w
    kernel = shape.kernel_h * shape.kernel_w
    vector_operands = sum(op.vector for op in alu_ops)
    gemm_loops, reset_loops = gemm_loop_nest(shape, tile), reset_loop_nest(tile)
    inp_bytes = counts.channel_tiles * n * ci * rows_inside * cols_inside * counts.steps * hw.inp_elem_bytes
    features = {
        "tiles": counts.tiles,
        "steps": counts.steps,
        "threads": np.maximum(1, np.minimum(vt, counts.tiles)),
        "inp_bytes": inp_bytes,
        "inp_transfers": n * ci,
        "wgt_bytes_per_step": co * ci * kernel * hw.wgt_elem_bytes,
        "gemm_per_step": gemm_loops.prod(axis=-1),
        "acc_elements": acc_elements,
        "alu_ops": np.full_like(n, len(alu_ops)),
        "acc_bytes_per_tile": vector_operands * co * hw.acc_elem_bytes,
        "acc_transfers": np.full_like(n, vector_operands),
        "out_bytes_per_tile": acc_elements * hw.out_elem_bytes,
        "store_transfers": n * co,
        "uop_bytes": UOP_BYTES * (kernel_uops(reset_loops) + kernel_uops(gemm_loops) + len(alu_ops)),
        "macs": np.full_like(n, shape.macs),
    }
    return {key: np.asarray(value, dtype=np.float64) for key, value in features.items()}


def layer_features(shape: ConvShape, tiling: Tiling, hw, alu_ops) -> dict[str, np.ndarray]:
    """Features of one layer under one tiling (arrays of length 1)."""
    return tiling_features(shape, hw, {k: np.array([v]) for k, v in tiling.to_dict().items()}, alu_ops)


def stack_features(rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([row[key] for row in rows]) for key in rows[0]}


def vta_counters(f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """VTA fsim's counters implied by features (reset GEMMs are not counted, as in fsim)."""
    return {
        "inp_load_nbytes": f["inp_bytes"],
        "wgt_load_nbytes": f["tiles"] * f["steps"] * f["wgt_bytes_per_step"],
        "acc_load_nbytes": f["tiles"] * f["acc_bytes_per_tile"],
        "uop_load_nbytes": f["threads"] * f["uop_bytes"],
        "out_store_nbytes": f["tiles"] * f["out_bytes_per_tile"],
        "gemm_counter": f["tiles"] * f["steps"] * f["gemm_per_step"],
        "alu_counter": f["tiles"] * f["alu_ops"] * f["acc_elements"],
    }


def reset_elements(f: dict[str, np.ndarray]) -> np.ndarray:
    """Accumulator elements the GEMM resets clear (not a VTA counter; energy prices them)."""
    return f["tiles"] * f["acc_elements"]


def _transfer(transfers, nbytes, latency, bandwidth):
    return transfers * latency + nbytes / bandwidth


def _round_steps(steps, tiles, load, gemm):
    """A round of `tiles` tiles from its first load to its last GEMM: with one tile its loads
    and GEMMs alternate; with more, a step of every tile takes the longer of load and GEMM."""
    overlapped = (steps * tiles - 1) * np.maximum(load, gemm) + gemm
    return np.where(tiles > 1, overlapped, steps * gemm + (steps - 1) * load)


def _round_stores(tiles, alu, store):
    """A round's ALU ops and stores: each tile's store follows its ALU ops."""
    return np.maximum(alu + tiles * store, tiles * alu + store)


def _port_shared_period(f, times, threads, following, latency, bandwidth):
    """A double-buffered round's period when its stores wait for the DRAM port that the first
    loads of the following round (`following` tiles) hold. A waiting store transfer gets the port
    between two load transfers; the rest follow the loads. The following round's first GEMM
    waits for the last store (through its reset); its other steps go at the slower of load and
    GEMM."""
    slower = np.maximum(times.load, times.gemm)
    first_loads = (following - 1) * slower + times.load
    store_ready = times.gemm + times.alu  # the last thread's last GEMM, then the first ALU ops
    load_transfers = f["inp_transfers"] + 1
    load_transfer = np.maximum(0, times.load - load_transfers * latency) / load_transfers
    store_transfers = threads * f["store_transfers"]
    store_transfer = f["out_bytes_per_tile"] / f["store_transfers"] / bandwidth
    # Store transfers that fit between the load transfers left once the first store is ready.
    slots = following * load_transfers * np.maximum(0, first_loads - store_ready) / first_loads
    between_loads = store_ready + store_transfers * (load_transfer + np.maximum(store_transfer, latency))
    after_loads = first_loads + slots * store_transfer + (store_transfers - slots) * (latency + store_transfer)
    stores_done = np.where(store_transfers <= slots, between_loads, after_loads)
    stores_done = np.maximum(stores_done, store_ready + threads * times.store)
    first_gemm = np.maximum(times.load, stores_done + times.reset)
    first_gemm = np.maximum(first_gemm, times.gemm + threads * (times.alu + times.reset))
    period = np.maximum(first_loads, first_gemm + times.gemm) + (f["steps"] - 1) * following * slower
    return np.where(threads > 1, period, 0)


def estimate(f: dict[str, np.ndarray], latency, bandwidth, alu_rate) -> dict[str, np.ndarray]:
    """Cycles and busy times for arrays of features; hardware arguments broadcast against them."""
    tiles, steps, threads = f["tiles"], f["steps"], f["threads"]
    load = _transfer(f["inp_transfers"], f["inp_bytes"] / (tiles * steps), latency, bandwidth)
    load = load + _transfer(1, f["wgt_bytes_per_step"], latency, bandwidth)
    gemm = f["gemm_per_step"]
    reset = f["acc_elements"]
    alu = f["alu_ops"] * np.ceil(f["acc_elements"] / alu_rate)
    store = _transfer(f["store_transfers"], f["out_bytes_per_tile"], latency, bandwidth)
    acc_load = np.where(
        f["acc_transfers"] > 0, _transfer(f["acc_transfers"], f["acc_bytes_per_tile"], latency, bandwidth), 0
    )
    uop_load = _transfer(1, f["uop_bytes"], latency, bandwidth)

    dram_tile = (f["inp_bytes"] / tiles + steps * f["wgt_bytes_per_step"] + f["out_bytes_per_tile"]) / bandwidth
    dram_tile = dram_tile + f["acc_bytes_per_tile"] / bandwidth
    k = threads
    rounds = np.ceil(tiles / k)
    # One round: the threads' tiles, their steps interleaved (a step of every thread takes
    # k * max(load, GEMM) once loads and GEMMs overlap; with one thread they alternate).
    steps_time = np.where(k > 1, steps * k * np.maximum(load, gemm), steps * gemm + (steps - 1) * load)
    # ALU operands are loaded after the last step's loads: what the last GEMMs do not hide.
    operand_wait = np.maximum(0, k * (acc_load - gemm))
    store_data = f["out_bytes_per_tile"] / bandwidth
    # One thread: the next tile's first load waits for the store's data when the store starts
    # (after the ALU ops) before that load ends.
    single = np.maximum(load + np.where(alu + latency < load, store_data, 0), alu + store + reset)
    boundary = np.where(k > 1, k * alu + reset, single) + operand_wait
    # With two threads the next round's loads run during this round's boundary.
    chain = np.where(k > 1, steps * k * gemm, steps_time) + boundary
    # Loads that reach the DRAM port while a store moves data wait for it: half of it on average.
    busy = np.maximum(k * (reset + steps * gemm + alu), k * (steps * load + acc_load + store_data / 2))
    # A thread's next reset waits for its store; the in-order compute module waits with it.
    store_chain = np.where(k > 1, reset + steps * k * gemm + _round_stores(k, alu, store), 0)
    busy = np.maximum(busy, store_chain)
    period = np.maximum(np.maximum(chain, busy), k * np.maximum(store, dram_tile))
    # The last round holds fewer tiles than threads when the threads do not divide the tiles.
    last = tiles - (rounds - 1) * k
    times = types.SimpleNamespace(load=load, gemm=gemm, alu=alu, reset=reset, store=store)
    into_last = np.maximum(period, _port_shared_period(f, times, k, last, latency, bandwidth))
    period = np.maximum(period, _port_shared_period(f, times, k, k, latency, bandwidth))
    fill = k * uop_load + load
    # The last round after the first load of its first thread.
    drain = _round_steps(steps, last, load, gemm) + np.maximum(0, last * (acc_load - gemm))
    drain = drain + _round_stores(last, alu, store)
    cycles = fill + np.maximum(rounds - 2, 0) * period + np.where(rounds > 1, into_last, 0) + drain

    counters = vta_counters(f)
    dram_bytes = sum(counters[key] for key in BYTE_COUNTERS)
    dram_cycles = dram_bytes / bandwidth
    gemm_cycles = tiles * (steps * gemm + reset)
    alu_cycles = tiles * alu
    cycles = np.maximum(cycles, np.maximum(dram_cycles, gemm_cycles + alu_cycles))
    return {
        "cycles": cycles,
        "gemm_cycles": gemm_cycles,
        "alu_cycles": alu_cycles,
        "dram_cycles": dram_cycles,
        "dram_bytes": dram_bytes,
        "load_cycles": tiles * (steps * load + acc_load) + threads * uop_load,
        "store_cycles": tiles * store,
    }
