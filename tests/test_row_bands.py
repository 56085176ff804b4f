"""Depthwise convs on the GEMM core as row bands (schedules.row_bands): the banded GEMMs give a
direct depthwise conv's integers, the compiled module equals the integer reference bit for bit
(with an input's zero point in the padding and without), quantization places each depthwise
conv the fastest of three ways by costs counted here, and the plan's host work is the relayout
counted here."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import helper
from test_narrow_groups import (
    FASTEST,
    SLOW_HOST,
    VTA,
    assert_module_matches,
    calibration_file,
    modelled_seconds,
    saved_model,
)

from codesign.compression import CompressionConfig, validate_compression
from codesign.errors import UsageError
from codesign.graph import extract_graph
from codesign.lowering import plan_layers
from codesign.packed_layout import plan_layouts
from codesign.pipeline import compile_model, import_model, quantize_model
from codesign.plan import LayerPlan, requant_alu_ops
from codesign.schedules.layer import ConvShape
from codesign.schedules.mapper import select_tiling
from codesign.schedules.row_bands import banded, banded_weight
from codesign.simulator.simulate import simulate_plans

# (channels, kernel (h, w), stride (h, w), padding (top, left, bottom, right), input (h, w))
SHAPES = {
    "5x5": (6, (5, 5), (1, 1), (2, 2, 2, 2), (7, 80)),
    "3x3_s2_odd": (5, (3, 3), (2, 2), (1, 1, 1, 1), (9, 37)),
    "3x3_s2x1": (4, (3, 3), (2, 1), (1, 1, 1, 1), (8, 50)),
    "3x3_s1x2": (4, (3, 3), (1, 2), (1, 1, 1, 1), (6, 45)),
    "5x5_s2_uneven_pads": (3, (5, 5), (2, 2), (1, 2, 2, 1), (11, 30)),
    "3x7_unpadded": (3, (3, 7), (1, 1), (0, 0, 0, 0), (5, 23)),
}


def depthwise_numpy(x: np.ndarray, weight: np.ndarray, stride, padding, pad_value=0) -> np.ndarray:
    """Integer depthwise conv, written out: (N, C, H, W) by (C, 1, KH, KW) -> int64; the padding
    holds `pad_value` (one per channel, or one for all)."""
    n, c, h, w = x.shape
    kh, kw = weight.shape[2:]
    top, left, bottom, right = padding
    padded = np.empty((n, c, h + top + bottom, w + left + right), dtype=np.int64)
    padded[:] = np.reshape(np.broadcast_to(pad_value, (c,)), (1, c, 1, 1))
    padded[:, :, top : top + h, left : left + w] = x
    out_h = (h + top + bottom - kh) // stride[0] + 1
    out_w = (w + left + right - kw) // stride[1] + 1
    out = np.zeros((n, c, out_h, out_w), dtype=np.int64)
    for dy in range(kh):
        for dx in range(kw):
            window = padded[:, :, dy : dy + stride[0] * out_h : stride[0], dx : dx + stride[1] * out_w : stride[1]]
            out += window * weight[:, 0, dy, dx].astype(np.int64)[None, :, None, None]
    return out


def banded_numpy(x: np.ndarray, weight: np.ndarray, layer: ConvShape, pixels: int) -> np.ndarray:
    """The core's computation: zero-padded rows widened to whole blocks of `pixels`, each block
    times its band tiles, summed over kernel rows and block offsets; cut to the row's width."""
    core = banded(layer, pixels)
    n, c, h, w = x.shape
    rows = np.zeros((n, c, core.in_h, core.in_w * pixels), dtype=np.int64)
    width = min(w, core.in_w * pixels - layer.pad_left)
    rows[:, :, layer.pad_top : layer.pad_top + h, layer.pad_left : layer.pad_left + width] = x[..., :width]
    blocks = rows.reshape(n, c, core.in_h, core.in_w, pixels)
    tiles = banded_weight(weight, core).astype(np.int64)  # (C, P out, P in, KH, KB)
    out = np.zeros((n, c, core.out_h, core.out_w, pixels), dtype=np.int64)
    for ky in range(core.kernel_h):
        for kb in range(core.kernel_w):
            taken = blocks[:, :, ky : ky + core.stride_h * core.out_h : core.stride_h]
            taken = taken[:, :, :, kb : kb + core.stride_w * core.out_w : core.stride_w]
            out += np.einsum("nchbi,cji->nchbj", taken, tiles[..., ky, kb])
    return out.reshape(n, c, core.out_h, core.out_w * pixels)[..., : layer.out_w]


@pytest.mark.parametrize("pixels", [8, 16, 32])
@pytest.mark.parametrize("layer", SHAPES.values(), ids=SHAPES.keys())
def test_row_bands_compute_the_depthwise_conv(layer, pixels):
    channels, kernel, stride, padding, size = layer
    rng = np.random.default_rng(channels * pixels)
    x = rng.integers(-128, 128, (1, channels, *size)).astype(np.int8)
    weight = rng.integers(-127, 128, (channels, 1, *kernel)).astype(np.int8)
    shape = ConvShape.conv2d(x.shape, weight.shape, channels, stride, padding, (1, 1))
    core = banded(shape, pixels)
    assert (core.groups, core.in_channels, core.out_channels) == (channels, pixels, pixels)
    assert core.out_h == shape.out_h and core.out_w * pixels >= shape.out_w > (core.out_w - 1) * pixels
    assert np.array_equal(banded_numpy(x, weight, shape, pixels), depthwise_numpy(x, weight, stride, padding))


def depthwise_model(
    path, channels, kernel, stride, padding, size, before: str | None = None, after: str = "Relu", seed=0
) -> str:
    """x -> 1x1 Conv -> [`before`, e.g. HardSwish] -> depthwise Conv -> `after` -> 1x1 Conv -> y;
    `before` = "input": x -> depthwise Conv -> `after` -> y."""
    rng = np.random.default_rng(seed)
    weights = {
        "w_in": rng.standard_normal((channels, channels, 1, 1)) / math.sqrt(channels),
        "w": rng.standard_normal((channels, 1, *kernel)) / math.prod(kernel) ** 0.5,
        "b": rng.standard_normal(channels) * 0.1,
        "w_out": rng.standard_normal((channels, channels, 1, 1)) / math.sqrt(channels),
    }
    dense = before != "input"
    nodes = [helper.make_node("Conv", ["x", "w_in"], ["a"])] if dense else []
    if before and dense:
        nodes.append(helper.make_node(before, ["a"], ["a_act"]))
    source = ("a_act" if before else "a") if dense else "x"
    conv = helper.make_node("Conv", [source, "w", "b"], ["d"], strides=list(stride), pads=list(padding), group=channels)
    nodes += [conv, helper.make_node(after, ["d"], ["r" if dense else "y"])]
    if dense:
        nodes.append(helper.make_node("Conv", ["r", "w_out"], ["y"]))
    else:
        weights = {key: weights[key] for key in ("w", "b")}
    return saved_model(path, nodes, "depthwise", (1, channels, *size), weights)


# layer, what precedes the depthwise conv, what follows it (HardSwish: a table it merges)
MODULES = {
    "5x5_zero_point": (24, (5, 5), (1, 1), (2, 2, 2, 2), (12, 40), "HardSwish", "Relu"),
    "5x5_nchw": (20, (5, 5), (1, 1), (2, 2, 2, 2), (7, 35), "input", "Relu"),
    "3x3_s2x1_table": (20, (3, 3), (2, 1), (1, 1, 1, 1), (9, 37), None, "HardSwish"),
    "5x5_s2_zero_point": (18, (5, 5), (2, 2), (2, 2, 2, 2), (10, 45), "HardSwish", "Relu"),
    "3x3_s1x2": (16, (3, 3), (1, 2), (1, 1, 1, 1), (6, 50), "Relu", "Relu"),
}


@pytest.mark.parametrize("case", MODULES.values(), ids=MODULES.keys())
def test_row_band_module_equals_the_reference_and_onnxruntime(case, tmp_path):
    """Pinned on vta_default's core as row bands (the compression's `host_convs` and `row_bands`):
    the module's output equals the integer reference, and onnxruntime's float output up to
    quantization. After HardSwish the depthwise conv's input has a zero point, which the host's
    padding holds. Between dense convs it reads and writes their blocks; on the model's input
    and output, NCHW. HardSwish tables before and after it are looked up in the passes that
    read its input and write its output."""
    *layer, before, after = case
    channels, size = layer[0], layer[4]
    shape = (1, channels, *size)
    path = depthwise_model(tmp_path / "dw.onnx", *layer, before=before, after=after)
    name = "conv2d_0" if before == "input" else "conv2d_1"
    compression = CompressionConfig(host_convs=(), row_bands=(name,))
    result = compile_model(path, VTA, {"x": shape}, calibration_file(tmp_path, shape), compression=compression)
    plan = next(p for p in result.lowered.plans if p.name == name)
    assert plan.placement == "accel" and "16-pixel row bands" in plan.describe()
    assert plan.shape == banded(plan.layer_shape, VTA.block_in)
    qnode = result.qgraph.nodes[name]
    assert ("pad_value" in qnode.params) == (before == "HardSwish")
    assert result.qgraph.placements["row_bands"] == (name,)
    assert (name in plan_layouts(result.qgraph, VTA).packed) == (before != "input")
    assert ("table" in qnode.params) == (after == "HardSwish")
    assert ("input_table" in qnode.params) == (before == "HardSwish")
    lookups = math.prod(qnode.shape) * (after == "HardSwish") + math.prod(shape) * (before == "HardSwish")
    assert plan.host_ops == lookups
    assert_module_matches(result, path, shape, seed=3, least_cosine=0.99)


def relayout_elements(layer: ConvShape, pixels: int) -> int:
    """The host's relayout of a row-banded conv, counted from the layer: it reads the input and
    writes the padded rows, widened to the input blocks the output blocks read; it reads the
    output blocks and writes the output (in the dense convs' blocks, the same size for channels
    in whole blocks)."""
    out_blocks = math.ceil(layer.out_w / pixels)
    band_blocks = math.ceil(((pixels - 1) * layer.stride_w + layer.kernel_w) / pixels)
    blocks_read = (out_blocks - 1) * layer.stride_w + band_blocks
    channels, padded_h = layer.groups, layer.in_h + layer.pad_top + layer.pad_bottom
    written = channels * padded_h * blocks_read * pixels
    return channels * layer.in_h * layer.in_w + written + channels * layer.out_h * (out_blocks * pixels + layer.out_w)


def row_band_seconds(qnode, layer: ConvShape, hw, lookups: int = 0) -> float:
    """The core's time for the banded conv (analytic model, the tile rule's tiling) plus the
    host's relayout, counted here, with `lookups` of a merged table in its output pass."""
    core = banded(layer, hw.block_in)
    p = qnode.params
    alu_ops = requant_alu_ops(p["bias"], p["multiplier"], p["shift"])
    plan = LayerPlan("bands", "conv2d", "accel", core, select_tiling(core, hw, alu_ops), alu_ops=alu_ops)
    plan.host_ops, plan.host_bytes = lookups, relayout_elements(layer, hw.block_in)
    (simulated,) = simulate_plans([plan], hw, "analytic").layers
    return simulated.accel_seconds + simulated.host_seconds


# (channels, kernel, stride, input): long rows with wide kernels (bands), short ones (host or
# super-groups)
PLACED = {
    "recogniser_5x5": (48, 5, 1, (12, 80)),
    "recogniser_5x5_s2": (48, 5, 2, (12, 80)),
    "long_rows_3x3": (32, 3, 1, (24, 160)),
    "small_map_3x3": (40, 3, 2, (12, 12)),
    "short_rows_5x5": (64, 5, 1, (28, 6)),
}


def test_depthwise_convs_take_the_fastest_of_three_ways(tmp_path):
    """Each depthwise conv runs on the host, as super-groups or as row bands, whichever the costs
    counted here make fastest; the plan's host work for row bands is the relayout counted here.
    Over vta_default and the same core with a slow host, every way is taken at least once."""
    mappings = set()
    for hw in (VTA, SLOW_HOST):
        for name, (channels, kernel, stride, size) in PLACED.items():
            mappings.add(fastest_mapping_checked(hw, tmp_path / f"{name}.onnx", channels, kernel, stride, size))
    assert mappings == {"host", "core", "row_bands"}


def fastest_mapping_checked(hw, path, channels, kernel, stride, size) -> str:
    """The way quantization placed the layer's depthwise conv, checked against the costs. Between
    two dense convs on the core, super-groups would chain: no packing."""
    pad = kernel // 2
    shape = (1, channels, *size)
    model = depthwise_model(path, channels, (kernel,) * 2, (stride,) * 2, (pad,) * 4, size)
    imported = import_model(model, {"x": shape})
    calibration = calibration_file(path.parent, shape)
    _, qgraph, _ = quantize_model(imported, hw, calibration, warn=lambda _: None, compression=FASTEST)
    qnode = qgraph.nodes["conv2d_1"]
    conv = ConvShape.conv2d(shape, (channels, 1, kernel, kernel), channels, (stride,) * 2, (pad,) * 4, (1, 1))
    super_groups, host = modelled_seconds(qnode, conv, hw, chained=True)  # between blocked values
    costs = {"host": host, "core": super_groups, "row_bands": row_band_seconds(qnode, conv, hw)}
    mapping = "row_bands" if qnode.params.get("row_bands") else qnode.placement.replace("accel", "core")
    assert mapping == min(costs, key=costs.get), (path.stem, hw.name, costs)
    if mapping == "row_bands":
        plan = next(p for p in plan_layers(qgraph, imported, hw) if p.name == "conv2d_1")
        assert plan.host_ops == 0 and plan.host_bytes == relayout_elements(conv, hw.block_in)
    return mapping


def test_tables_around_the_depthwise_conv_merge_wherever_it_runs(tmp_path):
    """PP-OCRv4 rec's 5x5 depthwise convs between two HardSwish tables: the conv looks the table
    after it up as it writes and the one before as it reads (pads) its input, on vta_default's
    host or as row bands. No table pass is left, and the placement compares the two with the
    lookups counted (one op per element)."""
    for channels, size, stride in [(240, (12, 80), (1, 1)), (480, (6, 80), (1, 1)), (240, (12, 80), (2, 1))]:
        shape = (1, channels, *size)
        path = depthwise_model(tmp_path / "dw.onnx", channels, (5, 5), stride, (2,) * 4, size, "HardSwish", "HardSwish")
        imported = import_model(path, {"x": shape})
        calibration = calibration_file(tmp_path, shape)
        _, qgraph, _ = quantize_model(imported, VTA, calibration, warn=lambda _: None, compression=FASTEST)
        qnode = qgraph.nodes["conv2d_1"]
        conv = ConvShape.conv2d(shape, (channels, 1, 5, 5), channels, stride, (2,) * 4, (1, 1))
        ins, outs = math.prod(shape), math.prod(qnode.shape)
        bands = row_band_seconds(qnode, conv, VTA, lookups=ins + outs)
        host = LayerPlan("host", "conv2d", "host", conv, host_ops=2 * conv.macs + ins + outs, host_bytes=ins + outs)
        (on_host,) = (layer.host_seconds for layer in simulate_plans([host], VTA, "analytic").layers)
        mapping = "row_bands" if qnode.params.get("row_bands") else qnode.placement
        assert mapping == ("row_bands" if bands < on_host else "host"), (stride, bands, on_host)
        assert "table" in qnode.params
        (table,) = [n for n in qgraph.nodes.values() if n.op == "lut"]  # the one before: the one after merged
        assert qnode.params["input_table"] == table.name and table.params["fused_into"] == "conv2d_1"
        assert plan_of(table.name, qgraph, imported).host_bytes == 0
        plan = plan_of("conv2d_1", qgraph, imported)
        assert plan.host_ops == ins + outs + (2 * conv.macs if mapping == "host" else 0)


def plan_of(name: str, qgraph, imported):
    return next(p for p in plan_layers(qgraph, imported, VTA) if p.name == name)


def test_row_bands_must_name_depthwise_convs(tmp_path):
    path = depthwise_model(tmp_path / "dw.onnx", 16, (3, 3), (1, 1), (1, 1, 1, 1), (8, 8))
    graph = extract_graph(import_model(path))
    with pytest.raises(UsageError, match=r"row_bands: 'conv2d_0' is not a depthwise conv"):
        validate_compression(CompressionConfig(row_bands=("conv2d_0",)), graph)
    validate_compression(CompressionConfig(row_bands=("conv2d_1",)), graph)
