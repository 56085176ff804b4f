"""The analytic cost model agrees with the event-level simulation where the tuner looks.

A seeded property test over random (design, layer, tiling) triples: designs drawn from the
hardware knobs a search space varies (spaces/*.toml, codesign.tuner.space: block_in/block_out,
scratchpads, DRAM bandwidth, the ALU multiplier, on the presets' core shapes), layers from real
networks (the test models' and others: strides 1 and 2, 1x1 to 7x7 kernels, padding, dilation,
groups, dense and batched matmuls as 1x1 convs), and three kinds of tiling per (design, layer):
the tile rule's, the one "auto" picks, and uniformly random ones among those that fit (with one
or two virtual threads); at least 200 triples of each kind. Per triple the DRAM bytes must be
equal and the cycles within 5 %.

The event side runs the instruction stream of the tiling's geometry (`tile_geometry`, which the
simulator checks every scheduled kernel against), so no kernel is built here.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from codesign.hardware import load_hardware, preset_names
from codesign.plan import AluOp, requant_alu_ops
from codesign.schedules.cost_model import estimate, layer_features
from codesign.schedules.event_sim import simulate_program
from codesign.schedules.layer import ConvShape
from codesign.schedules.mapper import candidate_tilings, select_tiling
from codesign.schedules.program import build_program
from codesign.schedules.tile_geometry import tile_counts, tile_geometry
from codesign.schedules.tiling import TilingError, fits, tile_footprint

SEED = 2024
PAIRS = 200  # (design, layer) pairs; four tilings each: the rule's, auto's and two random ones
RANDOM_TILINGS = 2
TOLERANCE = 0.05
PRESETS = {name: load_hardware(name) for name in preset_names()}


def conv(cin: int, cout: int, size: int, kernel: int, stride: int = 1, pad: int | None = None, dilation: int = 1,
         groups: int = 1) -> ConvShape:  # fmt: skip
    """A square conv; `pad` defaults to 'same' padding."""
    pad = (kernel - 1) * dilation // 2 if pad is None else pad
    return ConvShape(groups, 1, cin, cout, size, size, kernel, kernel, stride, stride, pad, pad, pad, pad, dilation,
                     dilation)  # fmt: skip


LAYERS = [
    # The accelerated layers of the test models (tests/models, tests/conftest.py TEST_MODELS).
    conv(1, 8, 28, 5),  # mnist-8
    conv(8, 16, 14, 5),
    ConvShape.dense(1, 256, 10),
    conv(3, 16, 32, 3),  # resnet_mini
    conv(16, 16, 32, 3),
    conv(16, 32, 32, 3, 2),
    conv(16, 32, 32, 1, 2),
    conv(32, 32, 16, 3),
    ConvShape.dense(1, 32, 10),
    conv(3, 16, 32, 3, 2),  # mobilenetv2_mini
    conv(16, 64, 16, 1),
    conv(64, 16, 16, 1),
    conv(64, 24, 8, 1),
    conv(24, 96, 8, 1),
    conv(96, 24, 8, 1),
    conv(24, 64, 8, 1),
    ConvShape.dense(1, 64, 10),
    ConvShape.dense(16, 64, 64),  # transformer_tiny
    ConvShape.dense(16, 16, 16, groups=4),
    ConvShape.dense(16, 64, 128),
    ConvShape.dense(16, 128, 64),
    # Other networks' layers (scaled down): ResNet stems and stages, grouped (ResNeXt-style)
    # convs, unpadded and odd-sized strided convs, 5x5 and 7x7 kernels, dilated (DeepLab) and
    # 1-D dilated (WaveNet) convs, a non-square kernel, classifiers and batched matmuls.
    conv(3, 32, 56, 7, 2),
    conv(64, 64, 14, 3),
    conv(64, 128, 14, 3, 2),
    conv(64, 128, 14, 1, 2),
    conv(128, 128, 7, 3),
    conv(32, 64, 28, 3, 2),
    conv(48, 48, 20, 5),
    conv(32, 32, 17, 3, dilation=2),
    conv(32, 32, 16, 3, 2, dilation=2),
    conv(64, 64, 14, 3, groups=4),
    conv(128, 128, 14, 3, 2, groups=8),
    conv(32, 64, 15, 3, 2, pad=0),
    conv(16, 24, 23, 5, 2),
    conv(8, 16, 30, 7, 2, pad=3),
    ConvShape(1, 2, 40, 24, 9, 13, 5, 3, 2, 1, 2, 0, 1, 1),
    ConvShape(1, 1, 32, 32, 1, 64, 1, 3, 1, 1, 0, 2, 0, 2, 1, 2),
    ConvShape.dense(4, 512, 100),
    ConvShape.dense(1, 1024, 256),
    ConvShape.dense(8, 256, 256, groups=2),
]


def random_design(rng: np.random.Generator):
    """A preset's core shape and DRAM latency with the knobs of spaces/mnist_joint.toml drawn."""
    base = PRESETS[str(rng.choice(sorted(PRESETS)))]
    kib = lambda choices: int(rng.choice(choices)) * 1024  # noqa: E731
    return base.with_changes(
        block_in=int(rng.choice([4, 8, 16, 32])),
        block_out=int(rng.choice([4, 8, 16, 32])),
        inp_buffer_bytes=kib([4, 8, 16, 32, 64]),
        wgt_buffer_bytes=kib([16, 64, 256]),
        acc_buffer_bytes=kib([16, 64, 128]),
        dram_bytes_per_cycle=float(rng.choice([4, 8, 16])),
        alu_has_multiplier=bool(rng.integers(2)),
    )


def random_alu_program(rng: np.random.Generator, multiplier: bool) -> list[AluOp]:
    """A requantization as lowering writes it: bias or not, per-channel multiplier (with the ALU
    multiplier) or shift (shift-only), sometimes the VTA tutorials' immediates-only program."""
    if rng.random() < 0.15:
        return [AluOp("SHR"), AluOp("MAX"), AluOp("MIN")]
    bias = rng.integers(-5, 5, 4) if rng.integers(2) else np.zeros(4)
    if multiplier:
        scale = np.array([3, 5, 7, 9]) if rng.integers(2) else np.full(4, 3)
        return requant_alu_ops(bias, scale, np.full(4, 9))
    shift = np.array([7, 8, 9, 9]) if rng.integers(2) else np.full(4, 8)
    return requant_alu_ops(bias, np.ones(4), shift)


def valid_tilings(shape: ConvShape, hw) -> list:
    """Every tiling that fits the scratchpads, with one virtual thread or with two (two output
    tiles at least, as the mapper requires)."""
    valid = []
    for tiling in candidate_tilings(shape, hw):
        footprint = tile_footprint(shape, tiling, hw)
        for threads in (1, 2):
            if (threads == 1 or tile_counts(shape, tiling, hw).tiles >= threads) and fits(footprint, hw, threads):
                valid.append(dataclasses.replace(tiling, virtual_threads=threads))
    return valid


def sample_triples(seed: int = SEED, pairs: int = PAIRS) -> list[dict]:
    rng = np.random.default_rng(seed)
    triples = []
    while len(triples) < pairs * (2 + RANDOM_TILINGS):
        hw = random_design(rng)
        shape = LAYERS[int(rng.integers(len(LAYERS)))]
        weight_bits = 4 if rng.random() < 0.2 else None
        alu = random_alu_program(rng, hw.alu_has_multiplier)
        try:
            tilings = {mode: select_tiling(shape, hw, alu, weight_bits, mode) for mode in ("rule", "auto")}
        except TilingError:
            continue  # not even one tile fits: the layer runs on the host
        layer_hw = hw.for_layer_weights(weight_bits)
        valid = valid_tilings(shape, layer_hw)
        picks = list(tilings.items()) + [
            ("random", valid[int(rng.integers(len(valid)))]) for _ in range(RANDOM_TILINGS)
        ]
        for kind, tiling in picks:
            triples.append(dict(kind=kind, hw=layer_hw, shape=shape, alu=alu, tiling=tiling, weight_bits=weight_bits))
    return triples


def both_models(triple: dict):
    """(event timing, analytic cycles, analytic DRAM bytes) of a triple."""
    shape, hw, alu, tiling = triple["shape"], triple["hw"], triple["alu"], triple["tiling"]
    program = build_program(shape, tile_geometry(shape, tiling, hw), hw, alu, tiling.virtual_threads)
    event = simulate_program(program, hw)
    analytic = estimate(
        layer_features(shape, tiling, hw, alu), hw.dram_latency_cycles, hw.dram_bytes_per_cycle,
        hw.alu_vectors_per_cycle,
    )  # fmt: skip
    return event, float(analytic["cycles"][0]), int(analytic["dram_bytes"][0])


def describe(triple: dict, event_cycles: float, analytic_cycles: float) -> str:
    hw, t = triple["hw"], triple["tiling"]
    design = (
        f"{hw.name}: core {hw.batch}x{hw.block_in}x{hw.block_out}, weights {hw.weight_bits} b, scratchpads "
        f"inp/wgt/acc {hw.inp_buffer_bytes // 1024}/{hw.wgt_buffer_bytes // 1024}/{hw.acc_buffer_bytes // 1024} KiB, "
        f"DRAM {hw.dram_bytes_per_cycle:g} B/cycle latency {hw.dram_latency_cycles}, "
        f"ALU multiplier {hw.alu_has_multiplier}"
    )
    alu = " ".join(op.opcode + ("(v)" if op.vector else "") for op in triple["alu"])
    tiling = f"n{t.n_tile} co{t.co_tile} ci{t.ci_tile} h{t.h_tile} w{t.w_tile} threads{t.virtual_threads}"
    error = (analytic_cycles - event_cycles) / event_cycles
    return (
        f"{triple['kind']} tiling [{tiling}] of {triple['shape'].describe()} (ALU {alu}) on [{design}]: "
        f"analytic {analytic_cycles:.0f}, event {event_cycles:.0f} cycles ({100 * error:+.1f} %)"
    )


def test_analytic_model_agrees_with_the_event_simulation_on_random_triples():
    triples = sample_triples()
    for kind in ("rule", "auto", "random"):
        assert sum(t["kind"] == kind for t in triples) >= 200, kind
    failures = []
    for triple in triples:
        event, analytic_cycles, analytic_bytes = both_models(triple)
        if analytic_bytes != event.dram_bytes:
            failures.append(
                f"DRAM bytes {analytic_bytes} vs {event.dram_bytes}: " + describe(triple, event.cycles, analytic_cycles)
            )
        elif abs(analytic_cycles - event.cycles) > TOLERANCE * event.cycles:
            failures.append(describe(triple, event.cycles, analytic_cycles))
    assert not failures, f"{len(failures)} of {len(triples)} triples beyond {TOLERANCE:.0%}:\n" + "\n".join(failures)
