"""Which elementwise chains after a GEMM layer the accelerator's ALU computes (HardSwish, LeakyReLU).

The frontend spells an activation as a chain of elementwise Relax ops on the layer's output x
(Paddle's HardSwish: x * clip(x + 3, 0, 6) / 6; ONNX HardSwish: x * (clip(x + 3, 0, 6) / 6);
LeakyRelu: nn.leakyrelu). Rather than matching spellings, the chain is evaluated symbolically
over a few closed forms of x, each step either mapping a form to a form or giving up:

    Affine      a * x + b
    Gate        p * clamp(a * x + b, lo, hi) + q
    HardSwish   c * x * clamp(a * x + b, 0, 1) + d
    LeakyRelu   c * max(x, alpha * x) + d

(d: a constant added after the activation, as PP-LCNetV3's learnable affine blocks do.)

A chain whose output is a HardSwish or LeakyRelu (with c > 0, and a > 0 for the gate) runs on
the ALU in fixed point (codesign.plan.AluActivation; codesign.quantize derives its parameters). Affine
and clamp steps alone (HardSigmoid, ReLU6) need no ALU op: codesign.graph folds them into the
layer's weights, bias and clamp before calibration.
"""

from __future__ import annotations

import dataclasses

from codesign.graph import Graph, Node, constant_value


@dataclasses.dataclass(frozen=True)
class Affine:
    a: float
    b: float


@dataclasses.dataclass(frozen=True)
class Gate:
    a: float
    b: float
    lo: float
    hi: float
    p: float = 1.0
    q: float = 0.0


@dataclasses.dataclass(frozen=True)
class HardSwish:
    a: float
    b: float
    c: float
    d: float = 0.0


@dataclasses.dataclass(frozen=True)
class LeakyRelu:
    alpha: float
    c: float
    d: float = 0.0


def chain_activation(graph: Graph, root: str, chain: list[str]):
    """The HardSwish or LeakyRelu form the chain (graph nodes from `root` to its output, in
    order) computes of root's value x, or None if it computes something else."""
    forms = {root: Affine(1.0, 0.0)}
    for name in chain:
        node = graph.nodes[name]
        if any(i not in forms for i in node.inputs):
            return None
        form = _step(node, [forms[i] for i in node.inputs])
        if form is None:
            return None
        forms[name] = form
    form = forms[chain[-1]]
    if isinstance(form, HardSwish) and form.a > 0 and form.c > 0:
        return form
    if isinstance(form, LeakyRelu) and form.c > 0:
        return form
    return None


def _step(node: Node, inputs: list):
    """The form of one elementwise node's output from its inputs' forms, or None."""
    if node.op == "clamp":
        return _clamp(inputs[0], *node.bounds)
    if node.op == "relax.nn.leakyrelu":
        x = inputs[0]
        return _leaky(x, Affine(float(node.call.attrs.alpha) * x.a, 0.0)) if isinstance(x, Affine) else None
    operands = _operands(node, inputs)
    if operands is None or len(operands) != 2:
        return None
    left, right = operands
    constant = [isinstance(v, float) for v in operands]
    if node.op == "relax.add":
        return _shift(right, left) if constant[0] else _shift(left, right) if constant[1] else None
    if node.op == "relax.subtract" and constant[1]:
        return _shift(left, -right)
    if node.op == "relax.multiply":
        if constant[0] or constant[1]:
            return _scale(right, left) if constant[0] else _scale(left, right)
        return _product(left, right) or _product(right, left)
    if node.op == "relax.divide" and constant[1] and right != 0:
        return _scale(left, 1.0 / right)
    if node.op == "relax.maximum" and not any(constant):
        return _leaky(left, right) or _leaky(right, left)
    return None


def _operands(node: Node, inputs: list) -> list | None:
    """The op's operands: forms for tensor inputs, floats for scalar constants."""
    operands = []
    for index, (kind, value) in enumerate(node.arg_slots):
        if kind == "node":
            operands.append(inputs[value])
            continue
        constant = constant_value(node, index)
        if constant is None or constant.size != 1:
            return None
        operands.append(float(constant.reshape(())))
    return operands


def _shift(form, offset: float):
    if isinstance(form, Affine):
        return Affine(form.a, form.b + offset)
    if isinstance(form, Gate):
        return dataclasses.replace(form, q=form.q + offset)
    if isinstance(form, (HardSwish, LeakyRelu)):
        return dataclasses.replace(form, d=form.d + offset)
    return None


def _scale(form, factor: float):
    if isinstance(form, Affine):
        return Affine(form.a * factor, form.b * factor)
    if isinstance(form, Gate):
        return dataclasses.replace(form, p=form.p * factor, q=form.q * factor)
    if isinstance(form, (HardSwish, LeakyRelu)):
        return dataclasses.replace(form, c=form.c * factor, d=form.d * factor)
    return None


def _clamp(form, low: float, high: float):
    if isinstance(form, Affine) and form.a != 0:
        return Gate(form.a, form.b, low, high)
    if isinstance(form, Gate) and form.p != 0:  # clamp(p * g + q) = p * clamp(g, bounds moved back) + q
        bounds = sorted(((low - form.q) / form.p, (high - form.q) / form.p))
        return dataclasses.replace(form, lo=max(form.lo, bounds[0]), hi=min(form.hi, bounds[1]))
    return None


def _product(x_part, gate):
    """(a * x) * (p * clamp(g, 0, hi)) = a * p * hi * x * clamp(g / hi, 0, 1)."""
    if not (isinstance(x_part, Affine) and x_part.b == 0 and isinstance(gate, Gate)):
        return None
    if gate.q != 0 or gate.lo != 0 or not 0 < gate.hi < float("inf"):
        return None
    return HardSwish(gate.a / gate.hi, gate.b / gate.hi, x_part.a * gate.p * gate.hi)


def _leaky(larger, smaller):
    """max(a * x, s * x) with a > 0 and 0 <= s <= a: a * max(x, (s / a) * x)."""
    forms = (larger, smaller)
    if not all(isinstance(f, Affine) and f.b == 0 for f in forms):
        return None
    if not (larger.a > 0 and 0 <= smaller.a <= larger.a):
        return None
    return LeakyRelu(smaller.a / larger.a, larger.a)
