"""The placement policy (codesign.compression): by default every conv the description holds runs
on the core; "fastest" moves a narrow-group conv to the host where its modelled host conv is
faster. Chosen in a compression file or with --placement on compile and simulate."""

from __future__ import annotations

import json

import pytest
from test_narrow_groups import PLACED, VTA, calibration_file, conv_layer_model

from codesign.cli import main
from codesign.compression import CompressionConfig, compression_from_dict
from codesign.errors import UsageError
from codesign.pipeline import import_model, quantize_model

# PP-OCR cls's 5x5 depthwise conv: on vta_default's host 0.74 ms, on its core 0.83 ms (as modelled).
LAYER = PLACED["ppocr_depthwise5x5"]
SHAPE = (1, LAYER[0], *LAYER[5])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("placement")
    return conv_layer_model(folder / "dw.onnx", *LAYER), calibration_file(folder, SHAPE)


def placement_of_conv(qgraph) -> str:
    (conv,) = [n for n in qgraph.nodes.values() if n.op == "conv2d"]
    return conv.placement


@pytest.mark.parametrize(("policy", "expected"), [("accelerator", "accel"), ("fastest", "host")])
def test_the_policy_places_a_conv_the_host_runs_faster(model, policy, expected):
    path, calibration = model
    imported = import_model(path, {"x": SHAPE})
    compression = compression_from_dict({"placement": policy})
    _, qgraph, _ = quantize_model(imported, VTA, calibration, warn=lambda _: None, compression=compression)
    assert placement_of_conv(qgraph) == expected
    # host_convs, where listed, wins over the policy
    pinned = CompressionConfig(host_convs=("conv2d_0",), placement=policy)
    _, qgraph, _ = quantize_model(imported, VTA, calibration, warn=lambda _: None, compression=pinned)
    assert placement_of_conv(qgraph) == "host"


def test_the_policy_round_trips_and_a_bad_one_is_named():
    assert CompressionConfig().to_dict()["placement"] == "accelerator"  # the default, recorded
    fastest = CompressionConfig(placement="fastest")
    assert compression_from_dict(fastest.to_dict()) == fastest
    with pytest.raises(UsageError, match='placement = "sideways" \\(expected "accelerator" or "fastest"\\)'):
        compression_from_dict({"placement": "sideways"})


def simulated_placements(argv: list[str], json_path) -> list[str]:
    assert main([*argv, "--json", str(json_path), "--quiet", "--no-cache"]) == 0
    return [layer["placement"] for layer in json.loads(json_path.read_text())["layers"] if layer["op"] == "conv2d"]


def test_simulate_takes_the_policy_from_the_command_line(model, tmp_path, capsys):
    path, calibration = model
    argv = ["simulate", path, "--hw", "vta_default", "--calibration", calibration, "--model", "analytic"]
    assert simulated_placements(argv, tmp_path / "default.json") == ["accel"]
    assert simulated_placements([*argv, "--placement", "fastest"], tmp_path / "fastest.json") == ["host"]
    capsys.readouterr()
    assert main([*argv, "--placement", "sideways"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--placement sideways: expected one of accelerator, fastest" in err
    design = tmp_path / "design.json"
    assert main(["compile", path, "--design", str(design), "--placement", "fastest", "-o", str(tmp_path / "o")]) == 2
    assert "--design and --placement cannot be used together" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
