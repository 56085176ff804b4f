"""The format of a module's manifest.json: a JSON Schema (Draft 2020-12, checked by `jsonschema`)
plus what a schema cannot say (hardware ranges, tiling against the scratchpads, cross-references).

`validate_manifest` raises one InvalidManifest line naming the field ('layers[1].tiling.h_tile').
The keys of the hardware spec, conv shapes, tilings and layers are those of the classes that
write them, so the schema is built on first use.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path

import jsonschema
import numpy as np
from jsonschema.exceptions import best_match, relevance

import codesign
from codesign.hardware import FIELDS, HardwareError, HardwareSpec, hardware_from_dict
from codesign.schedules.layer import ConvShape
from codesign.schedules.tiling import Tiling, fits, tile_footprint

FORMAT = "codesign-module"
# 3: "files" (the sha256 of every file of the module), checked on load.
# 4: the hardware spec's precision-scalable core (precision_scalable, *_scalable_mac_overhead),
#    and a layer's "layer_shape" (a super-grouped conv as the model writes it).
# 5: a layer's "weight_bytes" (its weight constant in the module, int4 weights two per byte);
#    pruned layers are their real shape (no "effective_shape").
FORMAT_VERSION = 5
# Largest extent of a layer's dimension a manifest may state (channels, pixels, kernel taps):
# far beyond any real layer, and small enough that the simulator's arrays of tiles stay in memory.
MAX_LAYER_DIM = 1 << 20


class InvalidManifest(ValueError):
    """A manifest's problem, naming the field ('layers[1].tiling.h_tile')."""


# ---- the schema -----------------------------------------------------------------------------------

# Formats of our own, with what is wrong with a value that is not one.
_FORMAT_CHECKER = jsonschema.FormatChecker(formats=())
_FORMAT_PROBLEMS = {
    "module-path": "is outside the module directory",
    "dtype": "is not a tensor element type",
    "finite": "is not a finite number",
}


@_FORMAT_CHECKER.checks("module-path")
def _is_module_path(value) -> bool:
    """A relative path that stays in the module directory (symbolic links are followed when the
    directory is read, by `codesign.deploy.module_file`)."""
    if not isinstance(value, str):
        return True
    path = Path(value)
    return bool(path.parts) and not path.is_absolute() and ".." not in path.parts


@_FORMAT_CHECKER.checks("dtype", raises=(TypeError, ValueError))
def _is_dtype(value) -> bool:
    return not isinstance(value, str) or np.dtype(value).name == value


@_FORMAT_CHECKER.checks("finite")
def _is_finite(value) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


# JSON Schema counts 1.0 as an integer; a manifest's integers are written as integers.
_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda checker, value: isinstance(value, int) and not isinstance(value, bool)
    ),
)

_STRING = {"type": "string"}
_OBJECT = {"type": "object"}
_NUMBER = {"type": "number", "minimum": 0, "format": "finite"}
_MODULE_PATH = {"type": "string", "format": "module-path"}
_SHA256 = {
    "type": "string",
    "pattern": "^[0-9a-f]{64}$",
    "maxLength": 64,  # `$` also matches before a final newline
    "description": "a sha256 (64 lowercase hex digits)",
}


def _exactly(properties: dict) -> dict:
    """An object with exactly these keys."""
    return {"type": "object", "required": list(properties), "properties": properties, "additionalProperties": False}


def _nullable(schema: dict) -> dict:
    return {**schema, "type": [schema["type"], "null"]}


@functools.cache
def schema() -> dict:
    """The JSON Schema of a manifest of FORMAT_VERSION."""
    from codesign.plan import LayerPlan

    shape = {"type": "array", "items": {"type": "integer", "minimum": 0}}
    tensor = _exactly({"name": _STRING, "shape": shape, "dtype": {"type": "string", "format": "dtype"}})
    conv_shape = _exactly(
        {
            f.name: {"type": "integer", "minimum": 0 if f.name.startswith("pad_") else 1, "maximum": MAX_LAYER_DIM}
            for f in dataclasses.fields(ConvShape)
        }
    )
    layer_fields = {
        "name": _STRING,
        "op": _STRING,
        "placement": {"enum": ["accel", "host"]},
        "shape": _nullable(conv_shape),
        "macs": {"type": ["integer", "null"], "minimum": 0},
        "tiling": _nullable(_exactly({f.name: {"type": "integer", "minimum": 1} for f in dataclasses.fields(Tiling)})),
        "scratchpad_bytes": {"type": ["object", "null"], "additionalProperties": {"type": "integer", "minimum": 0}},
        "alu_ops": {
            "type": "array",
            "items": {
                "type": "array",
                "prefixItems": [{"enum": ["ADD", "MUL", "SHR", "MAX", "MIN"]}, {"type": "boolean"}],
                "minItems": 2,
                "maxItems": 2,
                "description": "an [opcode, vector] pair",
            },
        },
        "host_work": _exactly({"ops": _NUMBER, "bytes": _NUMBER}),
        "weight_bits": {"enum": [4, 8, None]},  # the widths lowering writes
        "input_bits": {"enum": [16, None]},  # a wide layer's activations
        "weight_bytes": {"type": ["integer", "null"], "minimum": 0},
        "schedule": _STRING,
        "layer_shape": _nullable(conv_shape),
    }
    layer_keys = LayerPlan(name="", op="", placement="host").to_dict()  # the fields this version writes
    hardware_spec = _exactly({f.name: {} for f in dataclasses.fields(HardwareSpec)} | {"name": _STRING})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{FORMAT} manifest, format version {FORMAT_VERSION}",
        **_exactly(
            {
                "format": {"const": FORMAT},
                "format_version": {"const": FORMAT_VERSION},
                "codesign_version": _STRING,
                "tvm_version": _STRING,
                "library": _MODULE_PATH,
                "target": _STRING,
                "model": _exactly({"source": _STRING, "sha256": _SHA256}),
                "hardware": _exactly({"name": _STRING, "sha256": _SHA256, "file": _MODULE_PATH, "spec": hardware_spec}),
                "files": {"type": "object", "propertyNames": _MODULE_PATH, "additionalProperties": _SHA256},
                "inputs": {"type": "array", "items": tensor},
                "frozen_inputs": _OBJECT,
                "outputs": {"type": "array", "items": tensor, "minItems": 1},
                "quantization": _OBJECT,
                "compression": _OBJECT,
                "layers": {"type": "array", "items": _exactly({key: layer_fields.get(key, {}) for key in layer_keys})},
                "compile_seconds": {"type": "object", "additionalProperties": _NUMBER},
            }
        ),
    }


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    _Validator.check_schema(schema())
    return _Validator(schema(), format_checker=_FORMAT_CHECKER)


# ---- validation -----------------------------------------------------------------------------------


def validate_manifest(manifest) -> None:
    """Raise InvalidManifest naming a field of `manifest` that this format version does not allow:
    the format and its version first, then the schema, then the hardware spec's ranges, the files
    named, and each accelerated layer's tiling against the module's hardware."""
    if not isinstance(manifest, dict):
        raise InvalidManifest(f"expected a JSON object, got {_kind(manifest)}")
    if "format" not in manifest:
        _fail("format", f"is missing (not a {FORMAT} manifest)")
    if manifest["format"] != FORMAT:
        _fail("format", f"= {_shown(manifest['format'])} is not one of {json.dumps(FORMAT)}")
    version = manifest.get("format_version")
    if version is None:
        _fail("format_version", "is missing")
    if version != FORMAT_VERSION or type(version) is not int:
        _fail(
            "format_version",
            f"= {_shown(version)} is not supported (codesign {codesign.__version__} reads version "
            f"{FORMAT_VERSION}); recompile the module",
        )
    error = best_match(_validator().iter_errors(manifest), key=_relevance)
    if error is not None:
        raise InvalidManifest(_message(error))
    _check_spec(manifest["hardware"]["spec"], "hardware.spec")
    for field, name in (("library", manifest["library"]), ("hardware.file", manifest["hardware"]["file"])):
        if name not in manifest["files"]:
            _fail(field, f"= {_shown(name)} is not listed in 'files'")
    spec = HardwareSpec(**manifest["hardware"]["spec"])
    if spec.fingerprint() != manifest["hardware"]["sha256"]:
        _fail("hardware.sha256", "does not match 'hardware.spec'")
    for index, layer in enumerate(manifest["layers"]):
        _check_layer(layer, spec, f"layers[{index}]")


def _relevance(error):
    """best_match's ranking, except that a file name in 'files' is blamed after the field naming
    that file ('hardware.file' lies deeper than 'files', so would otherwise lose)."""
    return ("propertyNames" not in error.schema_path, *relevance(error))


def _check_spec(value: dict, field: str) -> None:
    doc: dict = {"name": value["name"]}
    for spec_field in FIELDS:
        if not spec_field.check(value[spec_field.attr]):
            _fail(
                _join(field, spec_field.attr),
                f"= {_shown(value[spec_field.attr])} is invalid (expected {spec_field.allowed})",
            )
        doc.setdefault(spec_field.section, {})[spec_field.key] = value[spec_field.attr]
    try:
        hardware_from_dict(doc, field)
    except HardwareError as err:
        raise InvalidManifest(f"'{field}' is invalid: {str(err).removeprefix(field + ': ')}") from err


def _check_layer(layer: dict, hw: HardwareSpec, field: str) -> None:
    for key in ("shape", "layer_shape"):
        shape = ConvShape(**layer[key]) if layer[key] is not None else None
        if shape is not None and (shape.out_h < 1 or shape.out_w < 1):
            _fail(_join(field, key), f"has no output pixels ({shape.out_h}x{shape.out_w})")
    if layer["placement"] == "accel":
        for key in ("shape", "tiling"):
            if layer[key] is None:
                _fail(_join(field, key), "must be given for a layer on the accelerator")
        _check_tiling(layer, hw, _join(field, "tiling"))


def _check_tiling(layer: dict, hw: HardwareSpec, field: str) -> None:
    """An accelerated layer's tiling must divide its extents and fit the scratchpads."""
    shape = ConvShape(**layer["shape"])
    layer_hw = hw.for_layer(layer["weight_bits"], layer.get("input_bits"))
    tiling = Tiling(**layer["tiling"])
    packed = shape.blocks(layer_hw)
    for key, extent, what in (
        ("n_tile", packed.n_blocks, "batch blocks"),
        ("co_tile", packed.co_blocks, "output-channel blocks"),
        ("ci_tile", packed.ci_blocks, "input-channel blocks"),
        ("h_tile", shape.out_h, "output rows"),
        ("w_tile", shape.out_w, "output columns"),
    ):
        if extent % getattr(tiling, key):
            _fail(_join(field, key), f"= {getattr(tiling, key)} does not divide the layer's {extent} {what}")
    if not fits(tile_footprint(shape, tiling, layer_hw), layer_hw, tiling.virtual_threads):
        _fail(field, f"does not fit the scratchpads of '{hw.name}'")


# ---- one line per problem -------------------------------------------------------------------------

_TYPE_NAMES = {
    "object": "an object",
    "array": "an array",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}


def _message(error: jsonschema.ValidationError) -> str:
    """A schema error as one line: the field's path, then what is wrong with it."""
    field = functools.reduce(_join, error.absolute_path, "")
    value, schema, keyword, expected = error.instance, error.schema, error.validator, error.validator_value
    if keyword == "required":
        return f"'{_join(field, next(key for key in expected if key not in value))}' is missing"
    if keyword == "additionalProperties":
        unknown = next(key for key in value if key not in schema.get("properties", {}))
        return f"'{_join(field, unknown)}' is not a field of this format version"
    if "propertyNames" in error.schema_path:  # a key that is wrong, rather than its value
        field = _join(field, value)
    if keyword == "type":
        return f"'{field}' must be {' or '.join(_TYPE_NAMES[t] for t in _types(expected))}, not {_kind(value)}"
    if keyword in ("enum", "const"):
        choices = expected if keyword == "enum" else [expected]
        return f"'{field}' = {_shown(value)} is not one of {', '.join(json.dumps(c) for c in choices)}"
    if keyword in ("minimum", "maximum"):
        low, high = schema.get("minimum"), schema.get("maximum")
        allowed = f"from {low} to {high}" if low is not None and high is not None else None
        allowed = allowed or (f"at least {low}" if low is not None else f"at most {high}")
        kind = "an integer" if "integer" in _types(schema.get("type", "number")) else "a number"
        return f"'{field}' = {_shown(value)} is out of range (expected {kind} {allowed})"
    if keyword == "format" and expected in _FORMAT_PROBLEMS:
        return f"'{field}' = {_shown(value)} {_FORMAT_PROBLEMS[expected]}"
    if "description" in schema:
        return f"'{field}' = {_shown(value)} is not {schema['description']}"
    if keyword == "minItems":
        return f"'{field}' must hold at least {expected} item(s)"
    return f"'{field}' is invalid ({error.message})"


def _types(types: str | list[str]) -> list[str]:
    return [types] if isinstance(types, str) else types


def _fail(field: str, problem: str):
    raise InvalidManifest(f"'{field}' {problem}")


def _join(field: str, key) -> str:
    return f"{field}[{key}]" if isinstance(key, int) else (f"{field}.{key}" if field else key)


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    for types, name in ((dict, "an object"), (list, "an array"), (str, "a string"), (int, "an integer")):
        if isinstance(value, types):
            return name
    return "a number"


def _shown(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
