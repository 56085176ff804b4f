"""Constant folding of the imported Relax program with numpy, before Relax's own FoldConstant.

The ONNX frontend leaves calls on constants (a conv bias reshaped to [1, C, 1, 1], a Clip's
bounds behind `where(isnan(bound), ...)`, transposed weights, dims gathered from `shape_of`).
Relax's FoldConstant compiles and runs each one as its own TVM function: about 60 ms apiece,
8 s of importing PP-OCR's direction classifier (126 such calls). Here the common ones become
constants with numpy first, with results equal to FoldConstant's bit for bit: data movement
(reshape, expand_dims, squeeze, permute_dims, concat, take, a static shape as a tensor) and
single IEEE operations (add, subtract, multiply, divide, comparisons, isnan, where).
FoldConstant then folds whatever else is left, and only runs if something is: it legalizes
every call to look at its arguments (0.15-0.2 s of ResNet-18's import with nothing to fold;
the rest of what it does, CanonicalizeBindings and DeadCodeElimination do in 1 ms).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from codesign.importer import static_shape

# Arguments computed at run time (a Var bound to one of these, or a function parameter): a call
# with none of them may be FoldConstant's to fold.
RUN_TIME_VALUES = (relax.Call, relax.TupleGetItem, relax.If, relax.SeqExpr)
RESHAPES = {"relax.reshape", "relax.expand_dims", "relax.squeeze"}  # the output's shape says it all
ELEMENTWISE = {
    "relax.add": np.add,
    "relax.subtract": np.subtract,
    "relax.multiply": np.multiply,
    "relax.divide": np.divide,
    "relax.isnan": np.isnan,
    "relax.where": np.where,
    "relax.less": np.less,
    "relax.less_equal": np.less_equal,
    "relax.greater": np.greater,
    "relax.greater_equal": np.greater_equal,
    "relax.equal": np.equal,
    "relax.not_equal": np.not_equal,
}


def fold_constants(mod: tvm.IRModule) -> tvm.IRModule:
    """Calls on constants folded: with numpy where it equals TVM, the rest by FoldConstant."""
    mod, left = fold_with_numpy(mod)
    if left:
        return relax.transform.FoldConstant()(mod)
    # What FoldConstant does besides folding: constants bound to variables inlined, unused bindings dropped.
    tidy = [relax.transform.CanonicalizeBindings(), relax.transform.DeadCodeElimination()]
    return tvm.transform.Sequential(tidy)(mod)


def fold_with_numpy(mod: tvm.IRModule) -> tuple[tvm.IRModule, bool]:
    """(`mod` with the calls numpy folds folded, whether calls on constants are left)."""
    folder = _NumpyFolder(mod)
    for gvar, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gvar] = folder.visit_expr(func)
    return mod, folder.left_constant_calls


def _folded(call: relax.Call, values: list[np.ndarray]) -> np.ndarray | None:
    """The call's result, or None where numpy is not sure to equal TVM."""
    name = call.op.name
    if name in RESHAPES:
        shape = static_shape(call.ty)
        return None if shape is None else values[0].reshape(shape)
    if name == "relax.permute_dims":
        axes = call.attrs.axes
        return np.transpose(values[0], None if axes is None else [int(a) for a in axes])
    if name == "relax.concat" and call.attrs.axis is not None:
        return np.concatenate(values, axis=int(call.attrs.axis))
    if name == "relax.take" and call.attrs.axis is not None:
        data, indices = values
        axis = int(call.attrs.axis)
        # Negative indices differ between take's modes (clip takes the first element): not folded.
        in_bounds = indices.size == 0 or (0 <= indices.min() and indices.max() < data.shape[axis])
        return np.take(data, indices, axis=axis) if in_bounds and indices.dtype.kind in "iu" else None
    if name == "relax.shape_to_tensor":
        return values[0]
    if name in ELEMENTWISE:
        with np.errstate(all="ignore"):  # inf and nan as IEEE says, like the compiled op
            return ELEMENTWISE[name](*values)
    return None


def _constant_values(call: relax.Call, lookup) -> list[np.ndarray] | None:
    """The call's arguments as arrays if every tensor argument is a constant (the shape operand of
    a reshape aside); else None."""
    args = list(call.args)
    if call.op.name == "relax.concat" and len(args) == 1 and isinstance(args[0], relax.Tuple):
        args = list(args[0].fields)
    elif call.op.name == "relax.reshape":
        args = args[:1]
    values = []
    for arg in args:
        if isinstance(arg, relax.Var):
            arg = lookup(arg)
        if call.op.name == "relax.shape_to_tensor":
            shape = _known_shape(arg, lookup)
            return None if shape is None else [np.array(shape, dtype="int64")]
        if not isinstance(arg, tvm.ir.expr.Constant):
            return None
        values.append(arg.value.numpy())
    return values


def _known_shape(expr, lookup) -> tuple[int, ...] | None:
    """The dims of a shape expression, or of `shape_of` a tensor with a static shape."""
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == "relax.shape_of":
        tensor = expr.args[0]
        return static_shape(tensor.ty) if isinstance(tensor, relax.Var) else None
    if isinstance(expr, relax.ShapeExpr) and all(isinstance(d, tvm.tirx.IntImm) for d in expr.values):
        return tuple(int(d) for d in expr.values)
    return None


def _calls_on_constants(call: relax.Call, lookup) -> bool:
    """Could FoldConstant fold this call: an op (or a call_tir) whose tensor arguments are all constants?"""
    args = list(call.args)
    if call.op.name == "relax.call_tir":
        args = list(args[1].fields) if isinstance(args[1], relax.Tuple) else args[1:2]
    elif call.op.name == "relax.concat" and len(args) == 1 and isinstance(args[0], relax.Tuple):
        args = list(args[0].fields)
    resolved = [lookup(arg) if isinstance(arg, relax.Var) else arg for arg in args]
    return not any(arg is None or isinstance(arg, RUN_TIME_VALUES) for arg in resolved)  # a parameter: None


@relax.expr_functor.mutator
class _NumpyFolder(relax.PyExprMutator):
    left_constant_calls = False  # a call on constants numpy did not fold: FoldConstant's work

    def visit_call_(self, call):
        call = self.builder_.normalize(super().visit_call_(call))
        if not isinstance(call.op, tvm.ir.Op):
            return call
        values = _constant_values(call, self.lookup_binding)
        result = None if values is None else _folded(call, values)
        folds = result is not None and isinstance(call.ty, relax.TensorType)
        if folds and (result.shape != static_shape(call.ty) or str(result.dtype) != str(call.ty.dtype)):
            folds = False
        if not folds:
            self.left_constant_calls |= _calls_on_constants(call, self.lookup_binding)
            return call
        return relax.const(np.array(result, order="C"), str(result.dtype))  # np.array keeps a 0-d result 0-d
