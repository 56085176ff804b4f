"""One Design object: hardware + compression + schedule, validated, saved and loaded as one JSON
file; `HardwareSpec.with_changes` derives specs exactly as loading a description does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli_errors import MNIST, assert_nothing_written, cli, error_line

from codesign import toml as tomllib
from codesign.compression import CompressionConfig
from codesign.design import DESIGN_FILE, Design
from codesign.errors import HardwareError, UsageError
from codesign.hardware import hardware_from_dict, load_hardware, preset_names

CHOICES = CompressionConfig({"conv2d_1": 4}, {"conv2d_0": 0.25}, "auto", ("matmul_0",))


def a_design() -> Design:
    hardware = load_hardware("vta_default").with_changes(name="small", block_in=8, wgt_buffer_bytes=32 * 1024)
    return Design(hardware, CHOICES)


def saved(tmp_path: Path, change) -> Path:
    """A design file with its document changed by `change(doc)`."""
    doc = a_design().to_dict()
    change(doc)
    path = tmp_path / "eval_3.json"
    path.write_text(json.dumps(doc))
    return path


def without_prices(name: str) -> dict:
    """A preset's description as a file without [energy] and [area] tables (they default)."""
    doc = tomllib.loads(load_hardware(name).to_toml())
    del doc["energy"], doc["area"]
    return doc


# ---- the file ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", preset_names())
def test_a_design_round_trips_exactly(tmp_path, name):
    hardware = load_hardware(name).with_changes(name="tuned", clock_mhz=0.1 + 0.2, dram_bytes_per_cycle=3)
    design = Design(hardware, CHOICES)
    again = Design.from_json(design.to_json())
    assert again == design
    assert again.hardware.fingerprint() == design.hardware.fingerprint()
    assert again.hardware.clock_mhz == 0.1 + 0.2  # every float exactly, not rounded
    assert again.schedule == "auto" and again.compression.float_layers == ("matmul_0",)


def test_save_writes_design_json_atomically_and_load_reads_it_back(tmp_path):
    design = a_design()
    written = design.save(tmp_path)  # a directory: its design.json
    assert written == tmp_path / DESIGN_FILE
    assert sorted(p.name for p in tmp_path.iterdir()) == [DESIGN_FILE]  # no staging file left
    assert Design.load(tmp_path) == design == Design.load(written)
    assert json.loads(written.read_text())["hardware"] == design.hardware.to_document()


@pytest.mark.parametrize(
    ("change", "error", "needle"),
    [
        (lambda d: d["hardware"]["gemm"].update(block_in=3), HardwareError, "hardware: 'gemm.block_in' = 3 is invalid"),
        (lambda d: d["hardware"]["alu"].pop("vectors_per_cycle"), HardwareError, "'alu.vectors_per_cycle' is missing"),
        (lambda d: d["compression"]["weight_bits"].update(conv2d_1=5), UsageError, "weight_bits['conv2d_1'] = 5"),
        (lambda d: d["compression"].update(schedule="fast"), UsageError, 'compression: schedule = "fast"'),
        (lambda d: d["compression"].update(prune={"conv2d_0": 1.5}), UsageError, "prune['conv2d_0'] = 1.5"),
        (lambda d: d.pop("hardware"), UsageError, "'hardware' is missing"),
        (lambda d: d.update(hw={}), UsageError, "unknown field 'hw'"),
        (lambda d: d.update(version=2), UsageError, "'version' = 2"),
        (lambda d: d.update(format="codesign-manifest"), UsageError, "'format' = \"codesign-manifest\""),
        (lambda d: d.update(compression=[]), UsageError, "'compression' = [] (expected an object)"),
    ],
)
def test_a_bad_design_is_one_line_naming_file_and_field(tmp_path, change, error, needle):
    path = saved(tmp_path, change)
    with pytest.raises(error) as err:
        Design.load(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and needle in message and "\n" not in message


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{", "not a valid JSON design file (line 1"),
        ("[1]", "expected a JSON object"),
        ("", "not a valid JSON"),
        ('{"weight_bits": {"conv2d_0": 4}}', "a compression file, not a design (it holds no hardware)"),
    ],
)
def test_a_file_that_is_not_a_design(tmp_path, text, needle):
    path = tmp_path / "design.json"
    path.write_text(text)
    with pytest.raises(UsageError) as err:
        Design.load(path)
    assert str(err.value).startswith(f"{path}: ") and needle in str(err.value)
    with pytest.raises(UsageError, match=r"missing\.json: no such design file"):
        Design.load(tmp_path / "missing.json")


def test_a_design_built_in_code_is_validated_too():
    with pytest.raises(UsageError, match='design: compression: schedule = "fast"'):
        Design(load_hardware("vta_default"), CompressionConfig(schedule="fast"))
    with pytest.raises(UsageError, match=r"weight_bits\['conv2d_0'\] = 2"):
        Design(load_hardware("vta_default"), CompressionConfig(weight_bits={"conv2d_0": 2}))


# ---- HardwareSpec.with_changes ----------------------------------------------------------------


@pytest.mark.parametrize(
    "sizes",
    [
        {"gemm": {"block_in": 32}, "scratchpad_bytes": {"weight": 64 * 1024}},
        {"scratchpad_bytes": {"input": 8 * 1024, "accumulator": 512 * 1024, "uop": 4096}},
        {"bits": {"weight": 4}},
        {"memory": {"clock_mhz": 250}, "gemm": {"batch": 4}},
    ],
)
@pytest.mark.parametrize("name", ["vta_default", "edge_1x8x8"])
def test_with_changes_derives_prices_as_loading_a_file_with_those_sizes(tmp_path, name, sizes):
    doc = without_prices(name)
    changes = {}
    for section, values in sizes.items():
        doc[section].update(values)
        changes.update({_attr(section, key): value for key, value in values.items()})
    path = tmp_path / "sized.toml"
    path.write_text(tomllib.dumps(doc))
    derived = load_hardware(name).with_changes(**changes)
    assert derived == load_hardware(path)  # every field: energy, area and leakage for the new sizes
    assert derived.prices() != load_hardware(name).prices()  # the sizes changed what they cost


def _attr(section: str, key: str) -> str:
    from codesign.hardware import FIELDS

    return next(f.attr for f in FIELDS if (f.section, f.key) == (section, key))


@pytest.mark.parametrize(
    ("changes", "file_change"),
    [
        ({"block_in": 3}, {"gemm": {"block_in": 3}}),
        ({"acc_buffer_bytes": 16}, {"scratchpad_bytes": {"accumulator": 16}}),
        ({"alu_multiplier_bits": 0}, {"alu": {"multiplier_bits": 0}}),
        ({"clock_mhz": -5}, {"memory": {"clock_mhz": -5}}),
    ],
)
def test_an_invalid_change_raises_what_loading_such_a_file_raises(tmp_path, changes, file_change):
    doc = tomllib.loads(load_hardware("vta_default").to_toml())
    for section, values in file_change.items():
        doc[section].update(values)
    path = tmp_path / "bad.toml"
    path.write_text(tomllib.dumps(doc))
    with pytest.raises(HardwareError) as loaded:
        load_hardware(path)
    with pytest.raises(HardwareError) as derived:
        load_hardware("vta_default").with_changes(**changes)
    assert str(derived.value).split(": ", 1)[1] == str(loaded.value).split(": ", 1)[1]
    assert str(derived.value).startswith("vta_default (")


def test_with_changes_keeps_prices_set_by_hand_and_rejects_unknown_fields():
    doc = without_prices("vta_default")
    doc["energy"] = {"mac_pj": 1.5}
    custom = hardware_from_dict(doc, "custom.toml")
    bigger = custom.with_changes(wgt_buffer_bytes=512 * 1024)
    assert bigger.energy_mac_pj == 1.5  # set by hand: kept
    assert bigger.energy_wgt_pj_per_byte > custom.energy_wgt_pj_per_byte  # a default: re-derived
    assert custom.with_changes() == custom
    with pytest.raises(TypeError, match="no field block_inn"):
        custom.with_changes(block_inn=8)


def test_the_multiplier_rule_and_the_int4_rule_have_one_home():
    vta = load_hardware("vta_default")
    shift_only = vta.with_changes(alu_has_multiplier=False)
    assert shift_only.alu_multiplier_bits == 0
    assert shift_only.with_changes(alu_has_multiplier=True).alu_multiplier_bits == 8
    assert vta.with_changes(alu_multiplier_bits=16).with_changes(alu_has_multiplier=True).alu_multiplier_bits == 16
    int4_layer = vta.for_layer_weights(4)
    assert int4_layer.weight_bits == 4 and int4_layer.wgt_elem_bytes == vta.wgt_elem_bytes // 2
    assert int4_layer.prices() == vta.prices()  # the core's own MACs and SRAMs price a narrow layer
    assert vta.for_layer_weights(8) is vta and vta.for_layer_weights(None) is vta


# ---- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize("other", [["--hw", "vta_default"], ["--compression", "c.json"]])
def test_design_with_hw_or_compression_is_a_usage_error_naming_both(capsys, tmp_path, other):
    path = a_design().save(tmp_path)
    out = tmp_path / "out"
    code, stdout, stderr = cli(capsys, "compile", MNIST, "--design", path, *other, "-o", out)
    error_line(code, stdout, stderr, 2, "--design and " + other[0], "cannot be used together")
    assert_nothing_written(out)


def test_compile_needs_hw_or_design(capsys, tmp_path):
    code, stdout, stderr = cli(capsys, "compile", MNIST, "-o", tmp_path / "out")
    error_line(code, stdout, stderr, 2, "--hw is required", "--design")


def test_a_bad_design_file_on_the_command_line_is_one_line(capsys, tmp_path):
    path = saved(tmp_path, lambda d: d["compression"].update(schedule="fast"))
    for command in (["compile", MNIST, "-o", tmp_path / "out"], ["simulate", MNIST]):
        code, stdout, stderr = cli(capsys, *command, "--design", path)
        error_line(code, stdout, stderr, 2, str(path), "schedule")
    assert_nothing_written(tmp_path / "out")
