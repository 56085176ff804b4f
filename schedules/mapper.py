"""The mapper: which tiling, and how many virtual threads, a layer gets on a design.

A layer's candidate tilings on a core shape (every divisor of its block and pixel extents) are
enumerated once, with their footprints and cost-model features. A design ranks the candidates
that fit its scratchpads by one key, lower is better, comparable across thread counts:

- "rule" (the tile rule): double buffering first, then the least DRAM traffic, the bigger tile,
  the wider tile;
- "auto": the fewest cycles. The closed-form cost model ranks every candidate; its best
  `TIMED_CANDIDATES` (over both thread counts) are timed by the event simulation
  (`schedules.event_sim`), the fewest event cycles win, and the layer is priced by them
  (`Mapping.cycles`), so the tuner's figures are the event simulation's. The closed form is
  within 5 % of it on all but about one tiling in 1,200 (up to 16 % where a store and a load
  reach the DRAM port together: schedules.cost_model); its own best is the event simulation's
  fastest of its best eight on about 95 % of layers, and its best three lose nothing measurable
  against those eight (scripts/bench_cost_model.py --shortlist).

For one and then two virtual threads the best fitting candidate is taken; two threads need at
least two output tiles to alternate between and are kept only with a lower key. Ties go to the
earlier candidate and to fewer threads.

Two front-ends run this one code: `map_layers` for many designs of one core shape at once (the
design sweep) and `select_tiling` for one layer on one description (lowering, the simulator).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import types

import numpy as np

from codesign.hardware import CoreGeometry
from codesign.schedules.cost_model import estimate, tiling_features
from codesign.schedules.event_sim import PortTiming, tiling_event_cycles
from codesign.schedules.layer import ConvShape
from codesign.schedules.tile_geometry import tile_counts
from codesign.schedules.tiling import SCRATCHPADS, TileFootprint, Tiling, TilingError, fits, overflows, tile_footprint

MODES = ("rule", "auto")
THREAD_COUNTS = (1, 2)
TIMED_CANDIDATES = 3  # "auto": the cost model's best (tiling, threads) the event simulation times
TILE_FIELDS = ("n_tile", "co_tile", "ci_tile", "h_tile", "w_tile")
# The fields of a description that candidates depend on; designs sharing them share candidates.
CORE_FIELDS = (
    "batch",
    "block_in",
    "block_out",
    "precision_scalable",
    "input_bits",
    "weight_bits",
    "acc_bits",
    "output_bits",
)


@dataclasses.dataclass(frozen=True)
class Layer:
    """A layer as the mapper sees it: its geometry, ALU program and weight width."""

    shape: ConvShape
    alu_ops: tuple  # AluOps of the requantization (they cost cycles)
    weight_bits: int | None = None  # narrower than the core's: packed, fewer bytes
    input_bits: int | None = None  # wider than the core's: a wide layer (`CoreGeometry.for_layer`)


# Those fields of a description alone, hashable: the candidates are cached by them.
_Core = dataclasses.make_dataclass("_Core", [(name, int) for name in CORE_FIELDS], bases=(CoreGeometry,), frozen=True)


def core_key(design) -> tuple:
    """A design's core geometry (its CORE_FIELDS) as a plain, picklable tuple."""
    return tuple(getattr(design, f) for f in CORE_FIELDS)


def core_of(design, weight_bits: int | None = None, input_bits: int | None = None):
    return _Core(*(getattr(design, f) for f in CORE_FIELDS)).for_layer(weight_bits, input_bits)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidate_tilings(shape: ConvShape, hw) -> list[Tiling]:
    """Every tiling whose extents divide the layer's blocks and pixels, one virtual thread."""
    packed = shape.blocks(hw)
    extents = (packed.n_blocks, packed.co_blocks, packed.ci_blocks, shape.out_h, shape.out_w)
    return [Tiling(*sizes) for sizes in itertools.product(*(divisors(e) for e in extents))]


def dram_traffic_bytes(shape: ConvShape, tiling: Tiling, hw):
    """Bytes moved between DRAM and the scratchpads for the whole layer under this tiling (the
    tile rule's cost; input padding counted as loaded). One Tiling, or arrays of tilings."""
    packed = shape.blocks(hw)
    counts = tile_counts(shape, tiling, hw)
    fp = tile_footprint(shape, tiling, hw)
    out_bytes = shape.groups * packed.n_blocks * packed.co_blocks * shape.out_h * shape.out_w * hw.out_elem_bytes
    return counts.tiles * counts.steps * (fp.inp_bytes + fp.wgt_bytes) + out_bytes


@dataclasses.dataclass(frozen=True)
class _Candidates:
    tilings: list[Tiling]
    footprint: TileFootprint  # arrays, one entry per candidate
    rule_rank: np.ndarray  # position in the tile rule's order (traffic, bigger tile, wider tile)
    features: dict[str, np.ndarray]  # cost-model features with one virtual thread


@functools.cache
def _candidates(layer: Layer, core) -> _Candidates:
    tilings = candidate_tilings(layer.shape, core)
    tiles = types.SimpleNamespace(
        **{k: np.array([getattr(t, k) for t in tilings]) for k in TILE_FIELDS},
        virtual_threads=np.ones(len(tilings), dtype=np.int64),
    )
    volume = tiles.n_tile * tiles.co_tile * tiles.ci_tile * tiles.h_tile * tiles.w_tile
    traffic = dram_traffic_bytes(layer.shape, tiles, core)
    rank = np.empty(len(tilings), dtype=np.int64)
    rank[np.lexsort((-tiles.w_tile, -volume, traffic))] = np.arange(len(tilings))
    features = tiling_features(layer.shape, core, vars(tiles), layer.alu_ops)
    return _Candidates(tilings, tile_footprint(layer.shape, tiles, core), rank, features)


def design_arrays(designs: list) -> types.SimpleNamespace:
    """Descriptions as columns: a float64 array per field (and per derived element size)."""
    fields = [f.name for f in dataclasses.fields(designs[0]) if f.name != "name"]
    derived = ["inp_elem_bytes", "wgt_elem_bytes", "acc_elem_bytes", "out_elem_bytes", "macs_per_cycle"]
    return types.SimpleNamespace(
        **{name: np.array([getattr(d, name) for d in designs], dtype=np.float64) for name in fields + derived}
    )


def _ranking_keys(layers: list[_Candidates], designs, mode: str) -> list[dict[int, np.ndarray]]:
    """Per layer and thread count, per design and candidate: lower is better, comparable across
    thread counts. "auto" prices every layer's candidates with every thread count in one call of
    the cost model (its time is mostly numpy's per-call overhead)."""
    if mode not in MODES:
        raise ValueError(f"schedule mode must be one of {MODES}, not {mode!r}")
    if mode == "rule":  # more threads rank first
        return [{t: c.rule_rank - t * len(c.tilings) for t in THREAD_COUNTS} for c in layers]
    parts = [(c, t) for c in layers for t in THREAD_COUNTS]
    features = {
        key: np.concatenate([c.features[key] for c, _ in parts]) for key in layers[0].features if key != "threads"
    }
    features["threads"] = np.concatenate([np.minimum(t, c.features["tiles"]) for c, t in parts])
    latency, bandwidth, alu_rate = (
        getattr(designs, name)[:, None]
        for name in ("dram_latency_cycles", "dram_bytes_per_cycle", "alu_vectors_per_cycle")
    )
    cycles = estimate(features, latency, bandwidth, alu_rate)["cycles"]
    ends = np.cumsum([len(c.tilings) for c, _ in parts])
    pieces = iter(np.split(cycles, ends[:-1], axis=1))
    return [{t: next(pieces) for t in THREAD_COUNTS} for _ in layers]


def _select(candidates: _Candidates, designs, keys: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(candidate, virtual threads, some tiling fits) per design, by the ranking `keys`."""
    count = len(designs.inp_buffer_bytes)
    capacity = types.SimpleNamespace(**{have: getattr(designs, have)[:, None] for _, _, have in SCRATCHPADS})
    best, best_threads = np.zeros(count, dtype=np.int64), np.ones(count, dtype=np.int64)
    best_key = np.full(count, np.inf)
    for threads in THREAD_COUNTS:
        fitting = fits(candidates.footprint, capacity, threads)
        key = np.where(fitting, keys[threads], np.inf)
        choice = key.argmin(axis=1)
        chosen_key = key[np.arange(count), choice]
        alternates = candidates.features["tiles"][choice] >= threads  # tiles for every thread
        better = alternates & (chosen_key < best_key)
        best = np.where(better, choice, best)
        best_threads = np.where(better, threads, best_threads)
        best_key = np.where(better, chosen_key, best_key)
    return best, best_threads, np.isfinite(best_key)


@dataclasses.dataclass(frozen=True)
class Mapping:
    """A layer's tiling on each of many designs."""

    tilings: list[Tiling]  # the layer's candidates
    candidate: np.ndarray  # per design: index into `tilings`
    threads: np.ndarray  # per design: virtual threads
    fits: np.ndarray  # per design: whether any tiling fits (else `candidate` is meaningless)
    features: dict[str, np.ndarray]  # per design: the chosen tiling's cost-model features
    cycles: np.ndarray | None = None  # "auto": per design, the chosen tiling's event-simulated cycles

    def tiling(self, design: int) -> Tiling:
        chosen = self.tilings[self.candidate[design]]
        return dataclasses.replace(chosen, virtual_threads=int(self.threads[design]))


def map_layers(layers: list[Layer], core, designs, mode: str = "rule") -> list[Mapping]:
    """Vectorised front-end: each layer on each design of `designs` (columns from
    `design_arrays`), all of the core shape of the description `core`."""
    candidates = [_candidates(layer, core_of(core, layer.weight_bits, layer.input_bits)) for layer in layers]
    mappings = []
    for layer, layer_candidates, keys in zip(layers, candidates, _ranking_keys(candidates, designs, mode)):
        if mode == "auto":
            chosen, threads, fit, cycles = _select_timed(layer, core, layer_candidates, designs, keys)
        else:
            (chosen, threads, fit), cycles = _select(layer_candidates, designs, keys), None
        features = {key: value[chosen] for key, value in layer_candidates.features.items()}
        features["threads"] = threads.astype(np.float64)
        mappings.append(Mapping(layer_candidates.tilings, chosen, threads, fit, features, cycles))
    return mappings


def _select_timed(layer: Layer, core, candidates: _Candidates, designs, keys: dict[int, np.ndarray]):
    """(candidate, virtual threads, some tiling fits, event cycles) per design: of the
    `TIMED_CANDIDATES` fitting (candidate, threads) with the lowest `keys`, the one with the
    fewest event-simulated cycles (ties to the lower key, then as `_select` breaks them)."""
    capacity = types.SimpleNamespace(**{have: getattr(designs, have)[:, None] for _, _, have in SCRATCHPADS})
    ranked = np.concatenate(
        [
            np.where(fits(candidates.footprint, capacity, t) & (candidates.features["tiles"] >= t), keys[t], np.inf)
            for t in THREAD_COUNTS
        ],
        axis=1,
    )  # column j: candidate j % width with THREAD_COUNTS[j // width] threads
    shortlist = np.argsort(ranked, axis=1, kind="stable")[:, :TIMED_CANDIDATES]
    timed = np.isfinite(np.take_along_axis(ranked, shortlist, axis=1))
    # Designs with the same shortlist and timing fields get the same choice: time each once.
    timing_fields = np.stack([getattr(designs, f.name) for f in dataclasses.fields(PortTiming)], axis=1)
    problems, problem_of = np.unique(
        np.concatenate([np.where(timed, shortlist, -1), timing_fields], axis=1), axis=0, return_inverse=True
    )
    layer_core = core_of(core, layer.weight_bits, layer.input_bits)
    choices = [_fastest(layer, layer_core, candidates.tilings, problem, shortlist.shape[1]) for problem in problems]
    chosen, threads, cycles = (np.array(values)[problem_of.ravel()] for values in zip(*choices))
    return chosen, threads, np.isfinite(cycles), cycles


def _fastest(layer: Layer, core, tilings: list[Tiling], problem: np.ndarray, shortlisted: int) -> tuple:
    """(candidate, threads, event cycles) of the fastest of the `shortlisted` columns that start
    `problem` (-1: not timed; the timing fields follow them); (0, 1, inf) when none is timed."""
    columns, timing = problem[:shortlisted].astype(np.int64), PortTiming(*map(float, problem[shortlisted:]))
    best = (0, 1, np.inf)
    for column in columns[columns >= 0]:
        candidate, threads = int(column % len(tilings)), THREAD_COUNTS[column // len(tilings)]
        tiling = dataclasses.replace(tilings[candidate], virtual_threads=threads)
        cycles = tiling_event_cycles(layer.shape, layer.alu_ops, tiling, core, timing)
        if cycles < best[2]:
            best = (candidate, threads, cycles)
    return best


def map_layer(layer: Layer, core, designs, mode: str = "rule") -> Mapping:
    """`map_layers` of one layer."""
    return map_layers([layer], core, designs, mode)[0]


def select_tiling(
    shape: ConvShape, hw, alu_ops=(), weight_bits: int | None = None, mode: str = "rule", input_bits: int | None = None
) -> Tiling:
    """Scalar front-end: the tiling of one layer on one description. Raises TilingError naming
    the scratchpads that are too small when no tiling fits."""
    mapping = map_layer(Layer(shape, tuple(alu_ops), weight_bits, input_bits), hw, design_arrays([hw]), mode)
    if not mapping.fits[0]:
        layer_hw = hw.for_layer(weight_bits, input_bits)
        lacking = overflows(tile_footprint(shape, Tiling(1, 1, 1, 1, 1), layer_hw), layer_hw)
        raise TilingError(f"scratchpad too small for one tile of {shape.describe()}: " + "; ".join(lacking))
    return mapping.tiling(0)


def choose_tiling(shape: ConvShape, hw) -> Tiling:
    """The tile rule's tiling (the ALU program does not change it)."""
    return select_tiling(shape, hw, mode="rule")
