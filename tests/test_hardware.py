"""Accelerator descriptions: presets, VTA's vta_config.json, and validation of every field."""

from __future__ import annotations

import json

import pytest

from codesign.errors import HardwareError
from codesign.hardware import (
    FIELDS,
    hardware_from_dict,
    hardware_from_vta_config,
    load_hardware,
    preset_names,
)

VTA_DEFAULT_CONFIG = {
    "TARGET": "sim",
    "HW_VER": "0.0.2",
    "LOG_INP_WIDTH": 3,
    "LOG_WGT_WIDTH": 3,
    "LOG_ACC_WIDTH": 5,
    "LOG_BATCH": 0,
    "LOG_BLOCK": 4,
    "LOG_UOP_BUFF_SIZE": 15,
    "LOG_INP_BUFF_SIZE": 15,
    "LOG_WGT_BUFF_SIZE": 18,
    "LOG_ACC_BUFF_SIZE": 17,
}


def valid_doc() -> dict:
    return {
        "name": "t",
        "gemm": {"batch": 1, "block_in": 16, "block_out": 16},
        "bits": {"input": 8, "weight": 8, "accumulator": 32, "output": 8},
        "scratchpad_bytes": {"uop": 32768, "input": 32768, "weight": 262144, "accumulator": 131072},
        "memory": {"clock_mhz": 100, "dram_bytes_per_cycle": 8, "dram_latency_cycles": 32},
        "alu": {"has_multiplier": True, "multiplier_bits": 8, "vectors_per_cycle": 1},
    }


def test_vta_default_preset_has_vta_parameters():
    hw = load_hardware("vta_default")
    assert (hw.batch, hw.block_in, hw.block_out) == (1, 16, 16)
    assert (hw.input_bits, hw.weight_bits, hw.acc_bits, hw.output_bits) == (8, 8, 32, 8)
    assert hw.uop_buffer_bytes == 32 * 1024
    assert hw.inp_buffer_bytes == 32 * 1024
    assert hw.wgt_buffer_bytes == 256 * 1024
    assert hw.acc_buffer_bytes == 128 * 1024
    assert hw.clock_mhz == 100 and hw.dram_bytes_per_cycle == 8  # 64-bit port
    # Element counts from VTA's documentation: 2,048 input, 1,024 weight, 2,048 accumulator elements.
    assert hw.inp_buffer_bytes // hw.inp_elem_bytes == 2048
    assert hw.wgt_buffer_bytes // hw.wgt_elem_bytes == 1024
    assert hw.acc_buffer_bytes // hw.acc_elem_bytes == 2048


def test_at_least_four_presets_load_with_distinct_shapes():
    specs = [load_hardware(name) for name in preset_names()]
    assert len(specs) >= 4
    assert len({s.gemm_shape for s in specs}) == len(specs)
    assert any(s.block_in != s.block_out for s in specs)
    assert any(s.batch > 1 for s in specs)
    assert any(not s.alu_has_multiplier for s in specs)


def test_vta_config_json_loads_to_the_vta_default(tmp_path):
    path = tmp_path / "vta_config.json"
    path.write_text(json.dumps(VTA_DEFAULT_CONFIG))
    from_json = load_hardware(path)
    preset = load_hardware("vta_default")
    assert from_json.fingerprint() == preset.fingerprint()


def test_vta_config_reports_missing_and_bad_keys():
    config = dict(VTA_DEFAULT_CONFIG)
    del config["LOG_BLOCK"]
    config["LOG_ACC_BUFF_SIZE"] = "big"
    with pytest.raises(HardwareError) as err:
        hardware_from_vta_config(config)
    assert "'LOG_BLOCK' is missing" in str(err.value)
    assert "'LOG_ACC_BUFF_SIZE' = 'big' is invalid" in str(err.value)


def test_toml_round_trip(tmp_path):
    for name in preset_names():
        hw = load_hardware(name)
        path = tmp_path / f"{name}.toml"
        path.write_text(hw.to_toml())
        assert load_hardware(path) == hw


@pytest.mark.parametrize(("section", "key"), [(f.section, f.key) for f in FIELDS])
def test_every_field_is_validated_by_name_with_its_range(section, key):
    doc = valid_doc()
    doc.setdefault(section, {})[key] = "nonsense"
    with pytest.raises(HardwareError) as err:
        hardware_from_dict(doc, "bad.toml")
    message = str(err.value)
    assert message.startswith("bad.toml: ")
    assert f"'{section}.{key}' = 'nonsense' is invalid (expected " in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("gemm", "block_in", 12, "a power of two from 1 to 256"),
        ("gemm", "batch", 128, "a power of two from 1 to 64"),
        ("bits", "weight", 2, "one of 4, 8"),
        ("scratchpad_bytes", "input", 0, "an integer from 1 to"),
        ("memory", "dram_bytes_per_cycle", -1, "a number above 0"),
    ],
)
def test_out_of_range_values_name_the_allowed_range(section, key, value, expected):
    doc = valid_doc()
    doc[section][key] = value
    with pytest.raises(HardwareError, match=f"'{section}.{key}' = {value} is invalid \\(expected {expected}"):
        hardware_from_dict(doc)


def test_all_problems_are_reported_at_once():
    doc = valid_doc()
    doc["gemm"]["block_in"] = 3
    doc["bits"]["input"] = 16
    del doc["memory"]["clock_mhz"]
    doc["gemm"]["blok_out"] = 16
    with pytest.raises(HardwareError) as err:
        hardware_from_dict(doc)
    message = str(err.value)
    for fragment in (
        "'gemm.block_in' = 3",
        "'bits.input' = 16",
        "'memory.clock_mhz' is missing",
        "unknown field 'gemm.blok_out'",
    ):
        assert fragment in message


def test_contradictory_alu_is_rejected():
    doc = valid_doc()
    doc["alu"].update(has_multiplier=False, multiplier_bits=8)
    with pytest.raises(HardwareError, match=r"must be 0 when 'alu.has_multiplier' is false"):
        hardware_from_dict(doc)


def test_scratchpad_smaller_than_one_element_is_rejected():
    doc = valid_doc()
    doc["scratchpad_bytes"]["weight"] = 128  # one 16x16 int8 weight element is 256 B
    with pytest.raises(HardwareError, match=r"'scratchpad_bytes.weight' = 128 cannot hold one 1x16x16 GEMM element"):
        hardware_from_dict(doc)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(HardwareError, match=r"no such hardware file or preset .*vta_default"):
        load_hardware("no_such_core")


def test_toml_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[gemm\nbatch = 1\n")
    with pytest.raises(HardwareError, match=r"broken.toml: not valid TOML"):
        load_hardware(path)


def test_fingerprint_ignores_the_name_but_not_the_fields():
    doc = valid_doc()
    base = hardware_from_dict(doc)
    doc["name"] = "renamed"
    assert hardware_from_dict(doc).fingerprint() == base.fingerprint()
    doc["scratchpad_bytes"]["input"] = 16384
    assert hardware_from_dict(doc).fingerprint() != base.fingerprint()


def test_price_tables_default_to_the_published_45nm_figures():
    hw = hardware_from_dict(valid_doc())
    assert hw.energy_mac_pj == 0.3  # 8-bit multiply 0.2 pJ + 32-bit add 0.1 pJ
    assert hw.energy_inp_pj_per_byte == 2.5  # 20 pJ per 64-bit read of a 32 KB SRAM
    assert hw.energy_dram_pj_per_byte == 162.5  # 1.3 nJ per 64 bits
    assert hw.area_mac_mm2 == 0.000419  # 282 + 137 um2
    # Presets spell the tables out; the defaults reproduce them for the same architecture.
    preset = load_hardware("vta_default")
    assert preset.energy_wgt_pj_per_byte == hw.energy_wgt_pj_per_byte
    assert preset.energy_leakage_pj_per_cycle == hw.energy_leakage_pj_per_cycle
