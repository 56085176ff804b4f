"""scripts/bench_models.py's table: one row per model, the optional columns (the streamed check,
onnxruntime's int8 baseline, the calibration-set spread) filled on the rows they belong to."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from rich.console import Console

from codesign.corpus import BaselineCheck, ModelCheck, StreamCheck

BENCH = Path(__file__).resolve().parents[1] / "scripts" / "bench_models.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_models", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rendered(table) -> dict[str, str]:
    console = Console(width=400, record=True)
    console.print(table)
    lines = [line.replace("┃", "│") for line in console.export_text().splitlines()]  # the header's bars
    return {line.split("│")[1].strip(): line for line in lines if line.startswith("│")}


def test_optional_columns_land_on_their_rows():
    bench = _bench_module()
    vad = ModelCheck("vad", True, float_cosine=[1.0], int8_cosine=[0.9973, 0.8885])
    vad.stream = StreamCheck(calls=186, cosine=0.9836, decisions_agree=0.958)
    classifier = ModelCheck("cls", True, float_cosine=[1.0], int8_cosine=[1.0], top1_agreement=1.0)
    failed = ModelCheck("broken", False, blocker="unsupported ONNX ops: Celu x2 (first: 'a')")
    zoo = ModelCheck("zoo", True, constant_weights=True, accel_mac_share=1.0)
    baselines = {
        "vad": BaselineCheck("vad", True, int8_cosine=[0.9459, 0.8000]),
        "cls": BaselineCheck("cls", False, blocker="ValueError: inside the quantizer"),
    }
    rows = _rendered(bench.table([vad, classifier, failed, zoo], "vta_default", {"cls": [0.99, 0.98]}, baselines))
    assert set(rows) == {"model", "vad", "cls", "broken", "zoo"}
    assert "0.9836, 95.8 % (186 calls)" in rows["vad"] and "0.9459 / 0.8000" in rows["vad"]
    assert "no: ValueError: inside the quantizer" in rows["cls"] and "0.9850 (0.9800-0.9900) (2)" in rows["cls"]
    assert "calls" not in rows["cls"] and "0.9459" not in rows["cls"]
    assert "no: unsupported ONNX ops: Celu x2" in rows["broken"]
    assert "(constant weights)" in rows["zoo"]
    header = [cell.strip() for cell in rows["model"].split("│")]
    vad_cells = [cell.strip() for cell in rows["vad"].split("│")]
    assert vad_cells[header.index("streamed on own states: first output cos, decisions")].endswith("(186 calls)")
    assert vad_cells[header.index("onnxruntime int8: cos, top-1")] == "0.9459 / 0.8000"


def test_without_streamed_models_or_baselines_the_columns_stay_out():
    bench = _bench_module()
    classifier = ModelCheck("cls", True, float_cosine=[1.0], int8_cosine=[1.0], top1_agreement=1.0)
    header = _rendered(bench.table([classifier], "vta_default", {}, {}))["model"]
    assert "streamed" not in header and "onnxruntime int8" not in header and "calibration sets" not in header
