"""Plotly figures of a run and of simulated designs. Large runs stay light: at most
MAX_CLOUD_POINTS evaluations beside the front in the scatter plots and MAX_PARALLEL_LINES in
the parallel coordinates, picked evenly through the run (the CSVs hold every evaluation)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from codesign.report.design_sim import SimulatedDesign
from codesign.report.run_data import RunData
from codesign.report.tables import config_lines, format_knob, objective_units
from codesign.tuner.database import Record
from codesign.units import axis_title

MAX_CLOUD_POINTS = 1500
MAX_PARALLEL_LINES = 500
FRONT_COLOR = "#d62728"
FRONT_NAME = "Pareto front (all objectives)"
CLOUD_COLOR = "rgba(120, 120, 120, 0.35)"
STAGE_COLORS = {"load": "#4c78a8", "compute": "#f58518", "store": "#54a24b", "host": "#b279a2", "static": "#9d9d9d"}
BOUND_COLORS = {"compute": "#f58518", "memory": "#4c78a8", "pipeline": "#54a24b"}
MAX_ROOFLINE_LABELS = 8
LATENCY_STAGES = ("load", "compute", "store", "host")
ENERGY_STAGES = ("load", "compute", "store", "static")


def evenly_spread(records: list[Record], limit: int) -> list[Record]:
    if len(records) <= limit:
        return records
    picks = np.unique(np.linspace(0, len(records) - 1, max(limit, 0)).round().astype(int))
    return [records[i] for i in picks]


def shown_evaluations(run: RunData, limit: int) -> tuple[list[Record], list[Record]]:
    """(other feasible evaluations to draw, the front)."""
    front_ids = {r.index for r in run.front}
    others = [r for r in run.feasible if r.index not in front_ids]
    return evenly_spread(others, limit), run.front


def numeric_choices(choices: list) -> bool:
    """Whether a knob's values are plotted as themselves (numbers, booleans as 0/1) rather than
    by their position among the choices."""
    return all(isinstance(c, int | float) for c in choices)


def knob_matrix(run: RunData, records: list[Record]) -> np.ndarray:
    """Knob values as numbers (booleans 0/1, other non-numbers their position among the choices)."""
    columns = []
    for knob, choices in run.space.knobs.items():
        numeric = numeric_choices(choices)
        columns.append([float(r.config[knob]) if numeric else choices.index(r.config[knob]) for r in records])
    return np.array(columns, dtype=np.float64).T.reshape(len(records), len(run.space.knobs))


def _objective_values(records: list[Record], objective: str, scale: float) -> np.ndarray:
    return np.array([r.metrics[objective] / scale for r in records], dtype=np.float64)


def pareto_pairs(run: RunData) -> go.Figure | None:
    """One scatter per pair of objectives: evaluations in grey, the Pareto front in red; hovering
    shows a design's objectives and configuration."""
    pairs = list(itertools.combinations(run.space.objectives, 2))
    if not pairs or not run.front:
        return None
    cloud, front = shown_evaluations(run, MAX_CLOUD_POINTS)
    units = objective_units(run)
    cloud_data = _cloud_customdata(run, cloud)
    cloud_hover = _cloud_hovertemplate(run)
    front_text = [_front_hover(run, r, units) for r in front]
    cols = min(3, len(pairs))
    rows = math.ceil(len(pairs) / cols)
    fig = make_subplots(rows=rows, cols=cols, horizontal_spacing=0.09, vertical_spacing=0.16 / rows * 2)
    for position, (x_objective, y_objective) in enumerate(pairs):
        row, col = position // cols + 1, position % cols + 1
        first = position == 0  # one legend entry per kind of point
        if cloud:
            x, y = _pair_values(cloud, x_objective, y_objective, units)
            fig.add_trace(_cloud_scatter(x, y, cloud_data, cloud_hover, first), row=row, col=col)
        x, y = _pair_values(front, x_objective, y_objective, units)
        fig.add_trace(_front_scatter(x, y, front_text, first), row=row, col=col)
        fig.update_xaxes(title_text=axis_title(x_objective, units[x_objective][1]), row=row, col=col)
        fig.update_yaxes(title_text=axis_title(y_objective, units[y_objective][1]), row=row, col=col)
    fig.update_layout(
        height=360 * rows, margin={"t": 40, "b": 40, "l": 60, "r": 20}, legend={"orientation": "h", "y": 1.06}
    )
    return fig


def _pair_values(records: list[Record], x_objective: str, y_objective: str, units: dict) -> tuple:
    """The records' two objectives, each in its unit."""
    x_scale, y_scale = units[x_objective][0], units[y_objective][0]
    return _objective_values(records, x_objective, x_scale), _objective_values(records, y_objective, y_scale)


def _cloud_customdata(run: RunData, cloud: list[Record]) -> np.ndarray | None:
    """Per evaluation: its index, then its knob values (as `knob_matrix` numbers them)."""
    if not cloud:
        return None
    # float32 holds every index and knob value exactly, in half the bytes (one copy per subplot).
    return np.column_stack([[r.index for r in cloud], knob_matrix(run, cloud)]).astype(np.float32)


def _cloud_hovertemplate(run: RunData) -> str:
    knobs = list(run.space.knobs)
    return (
        "evaluation %{customdata[0]}<br>%{x:.4g}, %{y:.4g}<br>"
        + "<br>".join(f"{k} = %{{customdata[{i + 1}]}}{_code_legend(run, k)}" for i, k in enumerate(knobs))
        + "<extra></extra>"
    )


def _cloud_scatter(x, y, customdata, hovertemplate: str, showlegend: bool) -> go.Scatter:
    return go.Scatter(
        x=x,
        y=y,
        mode="markers",
        marker={"size": 5, "color": CLOUD_COLOR},
        name="other evaluations",
        legendgroup="cloud",
        showlegend=showlegend,
        customdata=customdata,
        hovertemplate=hovertemplate,
    )


def _front_scatter(x, y, text: list[str], showlegend: bool) -> go.Scatter:
    return go.Scatter(
        x=x,
        y=y,
        mode="markers",
        marker={"size": 8, "color": FRONT_COLOR, "line": {"width": 1, "color": "white"}},
        name=FRONT_NAME,
        legendgroup="front",
        showlegend=showlegend,
        text=text,
        hovertemplate="%{text}<extra></extra>",
    )


def _code_legend(run: RunData, knob: str) -> str:
    """How a knob's number in the hover reads, where it is not the value itself."""
    choices = run.space.knobs[knob]
    if all(isinstance(c, bool) for c in choices):
        return " (1 = yes)"
    if numeric_choices(choices):
        return ""
    return " (" + ", ".join(f"{i} = {c}" for i, c in enumerate(choices)) + ")"


def _front_hover(run: RunData, record: Record, units: dict) -> str:
    values = [f"{o} = {record.metrics[o] / units[o][0]:.4g} {units[o][1]}" for o in run.space.objectives]
    return "<br>".join([f"<b>evaluation {record.index}</b> (Pareto)", *values, *config_lines(run, record.config)])


def knob_parallel_coordinates(run: RunData) -> go.Figure | None:
    """Every knob and objective as an axis; the front in red over a sample of the other
    evaluations. Drag along an axis to keep only the lines that pass there."""
    if not run.front:
        return None
    others, front = shown_evaluations(run, max(MAX_PARALLEL_LINES - len(run.front), 0))
    records = others + front  # the front drawn last, on top
    matrix = knob_matrix(run, records)
    dimensions = []
    for column, (knob, choices) in enumerate(run.space.knobs.items()):
        ticks = _choice_ticks(choices)
        dimensions.append(
            {
                "label": knob,
                "values": matrix[:, column],
                "tickvals": ticks[0],
                "ticktext": ticks[1],
                "range": [min(ticks[0]), max(ticks[0])] if len(ticks[0]) > 1 else [ticks[0][0] - 1, ticks[0][0] + 1],
            }
        )
    for objective, (scale, unit) in objective_units(run).items():
        values = _objective_values(records, objective, scale)
        dimensions.append({"label": axis_title(objective, unit), "values": values})
    on_front = np.array([0.0] * len(others) + [1.0] * len(front))
    fig = go.Figure(
        go.Parcoords(
            dimensions=dimensions,
            labelangle=-20,
            labelside="top",
            line={"color": on_front, "colorscale": [[0, "#c8c8c8"], [1, FRONT_COLOR]], "cmin": 0, "cmax": 1},
        )
    )
    fig.update_layout(height=480, margin={"t": 110, "b": 30, "l": 70, "r": 70})
    return fig


def _choice_ticks(choices: list) -> tuple[list[float], list[str]]:
    """Axis ticks at a knob's choices (booleans and numbers at their value, others by position)."""
    if numeric_choices(choices):
        return [float(c) for c in choices], [format_knob(c) for c in choices]
    return [float(i) for i in range(len(choices))], [str(c) for c in choices]


def stage_breakdown(designs: list[SimulatedDesign]) -> go.Figure | None:
    """Per-layer latency (load / compute / store / host) and accelerator energy (load / compute /
    store / static) as stacked bars; a menu picks the design."""
    if not designs:
        return None
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.1,
        subplot_titles=("latency by stage (µs)", "accelerator energy by stage (µJ)"),
    )
    visibility = []
    for number, design in enumerate(designs):
        layers = [layer for layer in design.simulation.layers if sum(layer.stage_seconds.values()) > 0]
        names = [layer.name for layer in layers]
        traces = []
        for stage in LATENCY_STAGES:
            values = [layer.stage_seconds[stage] * 1e6 for layer in layers]
            traces.append((1, _stage_bar(names, values, stage, "µs", number == 0)))
        for stage in ENERGY_STAGES:
            values = [(layer.stage_energy_pj or {}).get(stage, 0.0) * 1e-6 for layer in layers]
            traces.append((2, _stage_bar(names, values, stage, "µJ", number == 0, legend=stage == "static")))
        for row, trace in traces:
            fig.add_trace(trace, row=row, col=1)
        visibility.append(len(traces))
    fig.update_layout(
        barmode="stack",
        height=620,
        margin={"t": 60, "b": 40, "l": 60, "r": 20},
        updatemenus=_design_menu([d.label for d in designs], visibility),
    )
    return fig


def _stage_bar(names, values, stage, unit, visible, legend=True) -> go.Bar:
    return go.Bar(
        x=names,
        y=values,
        name=stage,
        legendgroup=stage,
        showlegend=legend,
        visible=visible,
        marker_color=STAGE_COLORS[stage],
        hovertemplate=f"%{{x}}<br>{stage}: %{{y:.4g}} {unit}<extra></extra>",
    )


def _design_menu(labels: list[str], traces_per_design: list[int]) -> list[dict]:
    if len(labels) < 2:
        return []
    buttons = []
    for number, label in enumerate(labels):
        visible = [i == number for i, count in enumerate(traces_per_design) for _ in range(count)]
        buttons.append({"label": label, "method": "restyle", "args": [{"visible": visible}]})
    return [{"buttons": buttons, "direction": "down", "x": 0, "xanchor": "left", "y": 1.18, "yanchor": "top"}]


def roofline(designs: list[SimulatedDesign]) -> go.Figure | None:
    """Accelerated layers by operational intensity (useful ops per DRAM byte) and attained
    throughput, under the design's compute and DRAM-bandwidth roofs; a menu picks the design."""
    if not designs:
        return None
    fig = go.Figure()
    counts = []
    for number, design in enumerate(designs):
        traces = _roofline_traces(design, visible=number == 0)
        for trace in traces:
            fig.add_trace(trace)
        counts.append(len(traces))
    fig.update_xaxes(type="log", title_text="operational intensity (ops per DRAM byte)")
    fig.update_yaxes(type="log", title_text="attained (GOP/s)")
    fig.update_layout(
        height=480,
        margin={"t": 70, "b": 50, "l": 60, "r": 20},
        updatemenus=_design_menu([d.label for d in designs], counts),
    )
    return fig


def _roofline_traces(design: SimulatedDesign, visible: bool) -> list[go.Scatter]:
    """A design's roof, then its accelerated layers, one trace per kind of bound."""
    hw = design.hw
    clock = hw.clock_mhz * 1e6
    peak = 2 * hw.macs_per_cycle * clock / 1e9
    bandwidth = hw.dram_bytes_per_cycle * clock / 1e9
    layers = [
        layer
        for layer in design.simulation.layers
        if layer.placement == "accel" and layer.dram_bytes and layer.accel_seconds
    ]
    ops = np.array([2.0 * layer.macs for layer in layers])
    intensity = ops / np.array([layer.dram_bytes for layer in layers], dtype=float)
    attained = ops / np.array([layer.accel_seconds for layer in layers]) / 1e9
    return [_roof_line(peak, bandwidth, intensity, visible), *_bound_scatters(layers, intensity, attained, visible)]


def _roof_line(peak: float, bandwidth: float, intensity: np.ndarray, visible: bool) -> go.Scatter:
    """The bandwidth roof up to the ridge point, the compute roof after it, spanning the layers."""
    ridge = peak / bandwidth
    low = min([ridge, *intensity]) / 4
    high = max([ridge, *intensity]) * 4
    return go.Scatter(
        x=[low, ridge, high],
        y=[bandwidth * low, peak, peak],
        mode="lines",
        line={"color": "#444", "width": 2},
        name=f"roof: {peak:.3g} GOP/s, {bandwidth:.3g} GB/s",
        visible=visible,
        hovertemplate="%{x:.3g} op/B: %{y:.3g} GOP/s<extra>roof</extra>",
    )


def _bound_scatters(layers: list, intensity: np.ndarray, attained: np.ndarray, visible: bool) -> list[go.Scatter]:
    """One trace per kind of bound (in BOUND_COLORS order), even an empty one, so that every
    design has as many traces."""
    labelled = len(layers) <= MAX_ROOFLINE_LABELS  # more labels than that overlap
    traces = []
    for bound in BOUND_COLORS:
        group = [i for i, layer in enumerate(layers) if layer.bound == bound]
        traces.append(
            go.Scatter(
                x=intensity[group],
                y=attained[group],
                mode="markers+text" if labelled else "markers",
                marker={"size": 10, "color": BOUND_COLORS[bound]},
                name=f"{bound}-bound layers",
                showlegend=bool(group),
                visible=visible,
                text=[layers[i].name for i in group],
                textposition="top center",
                customdata=[layers[i].shape for i in group],
                hovertemplate="%{text}: %{customdata}<br>%{x:.3g} op/B, %{y:.3g} GOP/s<extra></extra>",
            )
        )
    return traces
