"""Shape inference and constant folding of everything that depends only on shapes and constants.

Exporters (Paddle2ONNX, tf2onnx, ultralytics, torch with dynamic axes) compute reshape targets,
pads and anchor grids from `Shape` at run time. Once the input shapes are bound, all of that
is constant. onnxslim folds it (and inlines `If` nodes whose condition became constant, which
onnxsim does not do: it fails on models with `If` subgraphs). Measured on the corpus models
(PP-OCR det/rec/cls, magika, YOLOX, silero-vad), onnxslim folds every shape subgraph in
0.1-1 s per model.
"""

from __future__ import annotations

import contextlib
import io
import logging

import onnx

from codesign.errors import ModelError


def fold_constants(model: onnx.ModelProto, source: str) -> onnx.ModelProto:
    """The model with every constant subgraph folded and constant-condition `If`s inlined."""
    # Stale shapes of graph outputs and intermediates (often dynamic) would block inference.
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")
    del model.graph.value_info[:]
    import onnxslim  # half a second to import (sympy): only commands that import a model pay it

    logging.getLogger("onnxslim").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            folded = onnxslim.slim(model)
    except Exception as err:
        raise ModelError(f"{source}: cannot fold the model's constant subgraphs ({_reason(err)})") from err
    if folded is None:
        raise ModelError(f"{source}: cannot fold the model's constant subgraphs")
    return onnx.shape_inference.infer_shapes(folded)


def _reason(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines or [type(err).__name__])[0][:200]
