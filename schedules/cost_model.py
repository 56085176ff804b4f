"""The cost model: a tiling's features, the VTA counters they imply, and cycles in closed form,
vectorised with numpy (many tilings and designs per call). The mapper ranks tilings with it
("auto" mode, whose best three it then times with the event simulation), the design sweep prices
designs under the tile rule with it, and it is the simulator's analytic model.

`tiling_features` reduces a layer, its tilings and a core to per-tile and per-step quantities
(bytes, transfers, micro-ops); `vta_counters` turns them into VTA fsim's counters; `estimate`
turns them into cycles by following the instruction stream `schedules.event_sim` runs, a round
(one tile per virtual thread) at a time, with a fixed number of array operations whatever the
tile and step counts:

- a round's boundary: its ALU operand loads, ALU ops and stores, and the next round's first
  input and weight loads, which share the DRAM port with the stores; the resets wait for the
  stores (in order on the compute module), the next GEMMs for the loads and the resets;
- the port: while a load and the store stream both move data they take turns transfer for
  transfer, the one with the shorter transfers (latency plus data) waiting behind the other's
  data once it drifts into it (`_walk`); a load and a store transfer reaching the port together
  go in program order (the finished round's ALU operand loads before its stores, the stores
  before the next round's loads);
- a round's steps: loads and GEMMs alternate with one thread; with two, a step's loads hide
  behind the other thread's GEMMs (the longest path through both chains);
- the next round's step 1 loads, which meet the stores still under way behind the first
  thread's (the other threads' resets wait for those);
- the first round (no stores yet), the next two rounds (three with one step: the port takes a
  round longer to settle), the steady period they settle to for the rounds between, the last
  round (fewer tiles when the threads do not divide them) and its boundary (its ALU operand
  loads meet the first stores on the port);
- never less than the DRAM port's or the GEMM core's total busy time.

What it leaves out: tiles at the layer's edges load smaller input windows (the padding is not
moved), and the model times every tile with the mean window. Where a store and a load transfer
meet the port at nearly the same cycle, which goes first decides a round's timing, and the few
cycles the edge tiles differ by can tip it; such layers are the model's largest errors against
the event simulation (tests/test_cost_model_agreement.py). Over 24,000 sampled (design, layer,
tiling) triples (scripts/bench_cost_model.py --seeds 1-30), 20 are beyond 5 % (up to 15.6 %), 19
of them with two virtual threads and edge tiles; with every tile's window the mean, the event
simulation gave the model's cycles within 0.4 % on the 7 such triples of an earlier scan.
Closed form cannot follow the race tile by tile, so the mapper's "auto" times the model's best
three tilings with the event simulation and prices the layer by it (schedules.mapper).

One tiling on one design runs on Python floats (`_Floats`), many on numpy arrays (`_Arrays`); the
two give the same cycles.
"""

from __future__ import annotations

import math
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
        "inp_transfers": n * ci * hw.input_gather,
        "wgt_bytes_per_step": co * ci * kernel * hw.wgt_elem_bytes,
        "gemm_per_step": gemm_loops.prod(axis=-1) * hw.gemm_passes,  # a wide layer's micro-ops run per input byte
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


class _Arrays:
    """Elementwise operations on numpy arrays (many tilings and designs at once)."""

    where, maximum, minimum, floor, ceil, absolute = np.where, np.maximum, np.minimum, np.floor, np.ceil, np.abs

    @staticmethod
    def any(x) -> bool:
        return bool(x.any()) if isinstance(x, np.ndarray) else bool(x)

    @staticmethod
    def not_(x):
        return ~x


class _Floats:
    """The same operations on Python floats: one tiling on one design, without numpy's per-call
    overhead (IEEE doubles either way, so both give the same cycles)."""

    maximum, minimum, floor, ceil, absolute, any = max, min, math.floor, math.ceil, abs, bool

    @staticmethod
    def where(condition, a, b):
        return a if condition else b

    @staticmethod
    def not_(x):
        return not x


# The DMA loads of a round boundary, by what they move: (transfers, data cycles per transfer).
# "operands" are the finished round's ALU operand loads, "acc" the next round's (with one step).
LOADS = {
    "inp": ("inp_n", "inp_chunk"),
    "wgt": ("wgt_n", "wgt_chunk"),
    "acc": ("acc_n", "acc_chunk"),
    "operands": ("acc_n", "acc_chunk"),
}


def _times(f, latency, bandwidth, alu_rate, X):
    """Durations of a tile's instructions (per thread, in cycles) and, for each kind of load, how
    its transfers and the store's share the DRAM port (see `_walk`)."""
    inp_step = f["inp_bytes"] / (f["tiles"] * f["steps"])
    t = types.SimpleNamespace(
        latency=latency,
        tiles=f["tiles"],
        threads=f["threads"],
        steps=f["steps"],
        inp_n=f["inp_transfers"],
        inp_chunk=inp_step / f["inp_transfers"] / bandwidth,
        wgt_n=1.0,
        wgt_chunk=f["wgt_bytes_per_step"] / bandwidth,
        acc_n=f["acc_transfers"],
        acc_chunk=f["acc_bytes_per_tile"] / X.maximum(f["acc_transfers"], 1) / bandwidth,
        store_n=f["store_transfers"],
        store_chunk=f["out_bytes_per_tile"] / f["store_transfers"] / bandwidth,
        load=_transfer(f["inp_transfers"] + 1, inp_step + f["wgt_bytes_per_step"], latency, bandwidth),
        gemm=f["gemm_per_step"],
        reset=f["acc_elements"],
        alu=f["alu_ops"] * X.ceil(f["acc_elements"] / alu_rate),
        store=_transfer(f["store_transfers"], f["out_bytes_per_tile"], latency, bandwidth),
        uop=_transfer(1, f["uop_bytes"], latency, bandwidth),
    )
    c_s = t.store_chunk
    t.store_cycle = latency + c_s
    for kind, (n, chunk) in LOADS.items():
        c = getattr(t, chunk)
        q = latency + c
        leads = t.store_cycle > q  # the store's transfers take longer: the load follows them
        lead_cycle = X.where(leads, t.store_cycle, q)
        turn = X.maximum(X.maximum(q, t.store_cycle), c + c_s)  # a transfer of each in turn
        setattr(t, kind, types.SimpleNamespace(
            n=getattr(t, n), chunk=c, cycle=q, store_leads=leads, lead_cycle=lead_cycle,
            precedes_store=kind == "operands",  # earlier in program order: wins a tie for the port
            lead_chunk=X.where(leads, c_s, c), follow_chunk=X.where(leads, c, c_s),
            drift=X.absolute(q - t.store_cycle), turn_extra=turn - lead_cycle,
        ))  # fmt: skip
    return t


def _transfer(transfers, nbytes, latency, bandwidth):
    return transfers * latency + nbytes / bandwidth


def _walk(items, sigma, r, t, X, started=False):
    """DMA loads in program order, each (earliest start, kind, active), and the store stream (`r`
    transfers, the next starting at `sigma`; once `started`, sigma is the end of its latest
    transfer) on the one DRAM port. A transfer pays the latency, then waits for the port and moves
    its data. While a load and the store stream both move data, the one with the shorter transfers
    (the follower) drifts back by the difference each transfer until one arrives in the other's
    (the lead's) data; from then on they take turns, transfer for transfer, each turn the longer
    of either's latency plus data and both data times. A follower arriving with the lead goes
    first when it is the earlier instruction (the store is: it precedes the next round's loads).
    Returns each load's (start, end) and the store stream's (sigma, transfers left)."""
    L, c_s, q_s = t.latency, t.store_chunk, t.store_cycle
    total = r
    out, prev = [], None
    for earliest, kind, active in items:
        if prev is not None and not X.any(active):
            out.append((prev, prev))
            continue
        k = getattr(t, kind)
        n = X.where(active, k.n, 0)
        start = earliest if prev is None else X.where(active, X.maximum(prev, earliest), prev)
        nominal = start + n * k.cycle
        busy = ((r > 0) & (sigma < nominal)) | (((r < total) | started) & (sigma > start + L))
        if not X.any((n > 0) & busy):
            # The store stream is done, or starts after this load: each goes at its own pace.
            out.append((start, nominal))
            prev = nominal
            continue
        # Store transfers that arrive before the load's first one run at their own pace.
        ahead = X.minimum(X.maximum(X.ceil((start - sigma) / q_s), 0), r)
        sigma, r = sigma + ahead * q_s, r - ahead
        running = (r < total) | started
        base = start + X.where(running & (n > 0), X.maximum(sigma - start - L, 0), 0)
        both = (n > 0) & (r > 0)
        leads = k.store_leads
        # When the store leads, the load transfers that arrive before its first one go first; a
        # store transfer arriving while the last of them moves data waits for it.
        arrived = (sigma - base) / k.cycle
        arrived = X.floor(arrived) + 1 if k.precedes_store else X.ceil(arrived)
        before = X.where(leads, X.minimum(X.maximum(arrived, 0), n), 0)
        follower = base + before * k.cycle
        origin = X.where(leads, sigma + X.where(both, X.maximum(follower - sigma - L, 0), 0), base)
        offset = X.maximum(X.where(leads, follower, sigma) - origin, 0)
        cycles = X.floor(offset / k.lead_cycle)
        phase = offset - cycles * k.lead_cycle
        n_follow = X.where(leads, n - before, r)
        n_lead = X.where(leads, r, n) - cycles
        # With a transfer of the lead to meet, the store goes first unless the load precedes it.
        tie = (phase <= 1e-9) & X.not_(leads) & (n_lead > 0) & (not k.precedes_store)
        phase = X.where(tie, phase + k.lead_cycle, phase)
        drift = X.maximum(k.drift, 1e-9)
        free = X.where(phase < k.lead_chunk, 0, X.floor((phase - k.lead_chunk) / drift) + 1)
        free = X.minimum(X.maximum(free, 0), X.minimum(n_follow, X.maximum(n_lead, 0)))
        # Free follower transfers late in the lead's latency hold the port into its next data.
        over = phase + k.follow_chunk - k.lead_cycle
        late = X.minimum(X.maximum(X.ceil(over / drift), 0), free)
        bump = X.where(both, late * over - k.drift * late * (late - 1) / 2, 0)
        first = cycles + free - X.where(tie, 1, 0)
        pairs = X.where(both, X.maximum(X.minimum(n_follow - free, n_lead + cycles - first), 0), 0)
        paired = origin + bump + (first + pairs) * k.lead_cycle + (pairs - 1) * k.turn_extra
        # The store follows: the load's transfers stretch by the turns.
        end = base + n * k.cycle + pairs * k.turn_extra + bump
        next_sigma = X.where(pairs > 0, paired + c_s, sigma + X.where(both, free, 0) * q_s)
        used = X.where(both, free + pairs, 0)
        # The load follows the store's transfers.
        end = X.where(
            leads,
            X.where(pairs > 0, paired + k.chunk + (n - before - free - pairs) * k.cycle, base + n * k.cycle),
            end,
        )
        next_sigma = X.where(leads, X.where(pairs > 0, paired + k.turn_extra, origin + bump), next_sigma)
        used = X.where(leads, X.where(pairs > 0, first + pairs, 0), used)
        sigma, r = next_sigma, r - used
        out.append((start, end))
        prev = end
    return out, sigma, r


def _chain(items, t, X):
    """Each load's (start, end) when nothing else uses the port."""
    out, prev = [], None
    for earliest, kind, active in items:
        k = getattr(t, kind)
        start = earliest if prev is None else X.where(active, X.maximum(prev, earliest), prev)
        end = X.where(active, start + k.n * k.cycle, start)
        out.append((start, end))
        prev = end
    return out


def _boundary(s, m, t, X, walk=True):
    """From the end of a round's last GEMMs to the end of the next round's (`m` tiles; none after
    the last round). `s` is the state after the round: its tiles (m), the end of its last GEMMs
    (e) and of each thread's (gl), the load module's next free time (lf), the end of the stores
    before it (sf), its threads' ALU operand loads (acc; with one step they follow its loads),
    the previous round's ALU ops (alu), and a store already under way behind the operands (carry
    transfers done, the latest ending at carry_at). Returns the state after the next round."""
    k = len(s.gl)
    done, nxt = [s.m > j for j in range(k)], [m > j for j in range(k)]
    operands, one_step = t.acc_n > 0, t.steps == 1
    several = X.not_(one_step)
    # The finished round's ALU operands load first here; with one step they loaded before.
    items = [
        (X.maximum(s.alu[j], s.lf) if j == 0 else s.alu[j], "operands", done[j] & operands & several) for j in range(k)
    ]
    for j in range(k):
        items += [(s.gl[j], "inp", nxt[j]), (0.0, "wgt", nxt[j])]
    # With one step the next round's operands load right after its loads, once the finished
    # round's ALU ops are done with them.
    c = s.e
    for j in range(k):
        c = X.where(done[j], X.maximum(c, X.where(operands, s.acc[j], 0)) + t.alu, c)
        items.append((c, "acc", nxt[j] & operands & one_step))

    def alu_ends(loads):
        c, ends = s.e, []
        for j in range(k):
            ready = X.where(operands, X.where(one_step, s.acc[j], loads[j][1]), 0)
            c = X.where(done[j], X.maximum(c, ready) + t.alu, c)
            ends.append(c)
        return ends

    loads = _chain(items, t, X)
    alu = alu_ends(loads)
    stored = sum(X.where(d, 1.0, 0.0) for d in done)
    carried = s.carry > 0
    start = X.where(carried, s.carry_at, X.maximum(alu[0], s.sf))
    left = stored * t.store_n - s.carry
    sigma = start
    if walk and X.any(stored):
        loads, sigma, left = _walk(items, start, left, t, X, carried)
        alu = alu_ends(loads)
    stores = X.maximum(sigma + left * t.store_cycle, alu[-1] + t.store)
    sigma = stores - left * t.store_cycle  # the stores left, ending with the last thread's
    first_store = X.where(stored > 1, start + (stores - start) / X.maximum(stored, 1), stores)
    # The next round: its resets wait for the stores, in order on the compute module.
    c = alu[-1]
    for j in range(k):
        stored_j = X.where(done[j], first_store if j == 0 else stores, 0)
        c = X.where(nxt[j], X.maximum(c, stored_j) + t.reset, c)
    g0 = []
    for j in range(k):
        c = X.where(nxt[j], X.maximum(c, loads[k + 2 * j + 1][1]) + t.gemm, c)
        g0.append(c)
    # Its step 1, then the longest path through the load and GEMM chains for the steps after.
    l1, stores = _step_one_loads(loads[3 * k - 1][1], g0, nxt, sigma, left, stores, t, X, walk and X.any(stored > 1))
    g1 = []
    for j in range(k):
        c = X.where(nxt[j], X.maximum(c, l1[j]) + t.gemm, c)
        g1.append(c)
    rest = X.maximum(t.steps - 2, 0) * m
    alternate = g1[-1] + rest * (t.load + t.gemm)
    overlap = X.maximum(g1[-1] + rest * t.gemm, l1[-1] + rest * t.load + t.gemm)
    for j in range(k):
        overlap = X.where(nxt[j], X.maximum(overlap, g1[j] + (rest - j) * t.load + t.gemm), overlap)
    two = t.steps == 2
    e = X.where(one_step, g0[-1], X.where(two, g1[-1], X.where(m > 1, overlap, alternate)))
    slower = X.maximum(t.load, t.gemm)
    gl = [X.where(one_step, g0[j], X.where(two, g1[j], e - (m - 1 - j) * slower)) for j in range(k)]
    lf = X.where(one_step, loads[-1][1], X.where(two, l1[-1], e - t.gemm - X.maximum(0, (m - 1) * t.gemm - t.load)))
    acc = [loads[3 * k + j][1] for j in range(k)]
    carry_at, carry = 0 * e, 0 * e
    if k > 1:
        # With one step the second thread's operands may still load when the first thread's
        # ALU ops are done: its store starts behind them.
        alu0 = X.maximum(e, acc[0]) + t.alu
        late = nxt[1] & operands & one_step & (acc[1] > alu0 + t.latency)
        if X.any(late):
            item = [(loads[3 * k + 1][0], "acc", late)]
            (operand,), carry_at, left = _walk(item, X.maximum(alu0, stores), X.where(late, t.store_n, 0), t, X)
            acc[1] = X.where(late, operand[1], acc[1])
            lf = X.where(late & (m == 2), X.maximum(lf, operand[1]), lf)
            carry = X.where(late, t.store_n - left, 0)
    sf = X.where(s.m > 0, stores, s.sf)
    end = X.maximum(stores, alu[-1])
    return types.SimpleNamespace(
        e=e, lf=lf, sf=sf, gl=gl, alu=alu, acc=acc, carry_at=carry_at, carry=carry, m=m, end=end
    )


def _step_one_loads(lt, g0, nxt, sigma, left, stores, t, X, walk):
    """The end of each thread's step 1 loads (each after its thread's first GEMMs and the loads
    before it), and of the stores. Once the first thread's store is done, its step 1 loads may
    meet the other threads' stores on the port (the store stream: `left` transfers from `sigma`)."""
    if not walk:
        ends = []
        for j in range(len(g0)):
            lt = X.where(nxt[j], X.maximum(lt, g0[j]) + t.load, lt)
            ends.append(lt)
        return ends, stores
    several = X.not_(t.steps == 1)
    items = []
    for j in range(len(g0)):
        items += [(X.maximum(lt, g0[j]), "inp", nxt[j] & several), (0.0, "wgt", nxt[j] & several)]
    loads, sigma, left = _walk(items, sigma, left, t, X, started=True)
    return [loads[2 * j + 1][1] for j in range(len(g0))], X.maximum(stores, sigma + left * t.store_cycle)


def _pick(s, mask):
    """The elements of a state (or of the times) in `mask`."""
    return types.SimpleNamespace(
        **{key: [x[mask] for x in v] if isinstance(v, list) else _pick(v, mask) if isinstance(v, types.SimpleNamespace)
           else v[mask] if isinstance(v, np.ndarray) and v.ndim else v for key, v in vars(s).items()}
    )  # fmt: skip


def _merge(s, mask, sub):
    """State `s` with the elements in `mask` taken from `sub`."""

    def put(full, part):
        full = full.copy()
        full[mask] = part
        return full

    return types.SimpleNamespace(
        **{key: [put(x, y) for x, y in zip(v, getattr(sub, key))] if isinstance(v, list) else put(v, getattr(sub, key))
           for key, v in vars(s).items()}
    )  # fmt: skip


def _boundary_where(mask, s, otherwise, m, t, X):
    """`_boundary` from `s` where `mask` holds, `otherwise` elsewhere (computed only where needed)."""
    if X is _Floats:
        return _boundary(s, m, t, X) if mask else otherwise
    if mask.all():
        return _boundary(s, m, t, X)
    if not mask.any():
        return otherwise
    return _merge(otherwise, mask, _boundary(_pick(s, mask), m[mask], _pick(t, mask), X))


def _shift(s, by):
    """The state `by` cycles later."""
    return types.SimpleNamespace(
        **{key: v if key in ("m", "carry") else [x + by for x in v] if isinstance(v, list) else v + by
           for key, v in vars(s).items()}
    )  # fmt: skip


def _select(condition, a, b, X):
    return types.SimpleNamespace(
        **{key: [X.where(condition, x, y) for x, y in zip(v, getattr(b, key))] if isinstance(v, list)
           else X.where(condition, v, getattr(b, key)) for key, v in vars(a).items()}
    )  # fmt: skip


def _cycles(t, X):
    """Cycles of a layer's instruction stream (see the module docstring)."""
    k = t.threads
    if X is _Arrays and not k.size:
        return 0 * k
    threads = int(np.max(k)) if X is _Arrays else int(k)
    rounds = X.ceil(t.tiles / k)
    last = t.tiles - (rounds - 1) * k
    first = X.minimum(k, t.tiles)
    zero = 0 * t.tiles
    start = types.SimpleNamespace(
        e=zero, lf=first * t.uop, sf=zero, gl=[zero] * threads, alu=[zero] * threads, acc=[zero] * threads,
        carry_at=zero, carry=zero, m=zero,
    )  # fmt: skip
    r0 = _boundary(start, first, t, X, walk=False)  # no stores before the first round
    r1 = _boundary_where(rounds > 1, r0, r0, X.where(rounds > 2, k, X.where(rounds > 1, last, 0)), t, X)
    # The third round settles the period; with two steps or more the second has already.
    settle = (rounds == 3) | ((rounds > 3) & (t.steps == 1))
    r2 = _boundary_where(settle, r1, _shift(r1, r1.e - r0.e), X.where(rounds > 3, k, last), t, X)
    # With one step the fourth round may still shorten it (the port settling behind the stores).
    r3 = _boundary_where((rounds > 4) & (t.steps == 1), r2, _shift(r2, r2.e - r1.e), k, t, X)
    period = r3.e - r2.e
    steady = _shift(r3, X.maximum(rounds - 4, 0) * period)  # the last round, when it is a full one
    ending = _boundary_where((rounds > 3) & (last < k), _shift(steady, -period), steady, last, t, X)
    final = _select(rounds == 1, r0, _select(rounds == 2, r1, _select(rounds == 3, r2, ending, X), X), X)
    return _boundary(final, 0 * t.tiles, t, X).end  # the last round's operands, ALU ops and stores


def _model_cycles(f, latency, bandwidth, alu_rate) -> np.ndarray:
    """`_cycles` for features and hardware arguments that broadcast together."""
    shape = np.broadcast_shapes(np.shape(f["tiles"]), np.shape(latency), np.shape(bandwidth), np.shape(alu_rate))
    if math.prod(shape) == 1:
        one = {key: float(np.ravel(value)[0]) for key, value in f.items()}
        hardware = (float(np.ravel(x)[0]) for x in (latency, bandwidth, alu_rate))
        return np.full(shape, _cycles(_times(one, *hardware, _Floats), _Floats), dtype=np.float64)
    # Designs (rows) against tilings (columns), as the mapper ranks them: each distinct
    # (latency, bandwidth, ALU rate) once.
    hardware = [np.asarray(x, dtype=np.float64) for x in (latency, bandwidth, alu_rate)]
    by_design = len(shape) == 2 and all(h.shape == (shape[0], 1) for h in hardware)
    if by_design and shape[0] > 1 and all(np.ndim(value) <= 1 for value in f.values()):
        distinct, row = np.unique(np.concatenate(hardware, axis=1), axis=0, return_inverse=True)
        if len(distinct) < shape[0]:
            return _model_cycles(f, *np.split(distinct, 3, axis=1))[row.reshape(-1)]

    def full(x):
        return np.array(np.broadcast_to(x, shape), dtype=np.float64)

    arrays = {key: full(value) for key, value in f.items()}
    return _cycles(_times(arrays, *(full(h) for h in hardware), _Arrays), _Arrays)


def estimate(f: dict[str, np.ndarray], latency, bandwidth, alu_rate) -> dict[str, np.ndarray]:
    """Cycles and busy times for arrays of features; hardware arguments broadcast against them."""
    cycles = _model_cycles(f, latency, bandwidth, alu_rate)
    tiles, steps = f["tiles"], f["steps"]
    reset, gemm = f["acc_elements"], f["gemm_per_step"]
    alu = f["alu_ops"] * np.ceil(f["acc_elements"] / alu_rate)
    inp_step = f["inp_bytes"] / (tiles * steps)
    load = _transfer(f["inp_transfers"] + 1, inp_step + f["wgt_bytes_per_step"], latency, bandwidth)
    acc = np.where(
        f["acc_transfers"] > 0, _transfer(f["acc_transfers"], f["acc_bytes_per_tile"], latency, bandwidth), 0
    )
    store = _transfer(f["store_transfers"], f["out_bytes_per_tile"], latency, bandwidth)
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
        "load_cycles": tiles * (steps * load + acc) + f["threads"] * _transfer(1, f["uop_bytes"], latency, bandwidth),
        "store_cycles": tiles * store,
    }
