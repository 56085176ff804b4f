"""Terminal tables (rich) for compile results."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from codesign.plan import LayerPlan


def placement_table(plans: list[LayerPlan], hw) -> Table:
    table = Table(title=f"Placement on {escape(hw.name)} ({hw.gemm_shape} GEMM core)", title_justify="left")
    for column in ("layer", "op", "runs on", "shape", "MACs", "tile (n,co,ci,h,w)", "inp/wgt/acc KiB"):
        table.add_column(column, justify="right" if column == "MACs" else "left")
    for plan in plans:
        tile = footprint = shape = macs = ""
        if plan.shape is not None:
            shape, macs = plan.describe(), f"{plan.macs:,}"
        if plan.tiling is not None:
            t = plan.tiling
            tile = f"{t.n_tile},{t.co_tile},{t.ci_tile},{t.h_tile},{t.w_tile}"
            footprint = "/".join(f"{b / 1024:.1f}" for b in plan.footprint.values())
        where = "[green]accelerator[/]" if plan.placement == "accel" else "host"
        table.add_row(escape(plan.name), escape(plan.op), where, shape, macs, tile, footprint)
    return table


def placement_summary(plans: list[LayerPlan], simulation=None) -> dict:
    """MACs of every conv / matmul (grouped, dilated and transposed ones counted as they compute,
    super-grouped ones as the model writes them: `LayerPlan.macs`), the share on the accelerator,
    the integer weights' bytes in the module (int4 two per byte) and, given a simulation, the
    host's share of modelled latency."""
    on_accel = [p for p in plans if p.placement == "accel"]
    accel_macs = sum(p.macs for p in on_accel)
    total_macs = sum(p.macs for p in plans)
    summary = {
        "layers": len(plans),
        "accel_layers": len(on_accel),
        "macs": total_macs,
        "accel_macs": accel_macs,
        "accel_mac_share": accel_macs / total_macs if total_macs else 0.0,
        "weight_bytes": sum(p.weight_bytes or 0 for p in plans),
        "int4_layers": sum(p.weight_bits == 4 for p in plans),
    }
    if simulation is not None:
        totals = simulation.totals()
        latency = totals["latency_seconds"]
        summary["latency_seconds"] = latency
        summary["host_latency_share"] = totals["host_seconds"] / latency if latency else 0.0
    return summary


def print_placement(plans: list[LayerPlan], hw, console: Console | None = None, simulation=None) -> None:
    console = console or Console()
    console.print(placement_table(plans, hw))
    s = placement_summary(plans, simulation)
    line = (
        f"{s['accel_layers']} of {s['layers']} layers on the accelerator: {s['accel_macs']:,} of "
        f"{s['macs']:,} MACs ({100 * s['accel_mac_share']:.1f} %); integer weights {s['weight_bytes']:,} bytes"
    )
    if s["int4_layers"]:
        line += f" ({s['int4_layers']} int4 layer{'s' if s['int4_layers'] > 1 else ''}, two weights per byte)"
    if simulation is not None:
        line += (
            f"; modelled latency {1e3 * s['latency_seconds']:.3f} ms ({simulation.model} model), "
            f"{100 * s['host_latency_share']:.1f} % of it on the host"
        )
    console.print(line)


def simulation_table(report) -> Table:
    table = Table(title=f"Simulation on {escape(report.hardware)} ({report.model} model)", title_justify="left")
    columns = (
        "layer",
        "op",
        "runs on",
        "shape",
        "MACs",
        "GEMM uops",
        "DRAM KiB",
        "cycles",
        "util",
        "bound",
        "energy uJ",
        "time us",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("layer", "op", "runs on", "shape", "bound") else "right")
    for layer in report.layers:
        if layer.placement == "accel":
            table.add_row(
                escape(layer.name),
                layer.op,
                "[green]accelerator[/]",
                layer.shape,
                f"{layer.macs:,}",
                f"{layer.counters['gemm_counter']:,}",
                f"{layer.dram_bytes / 1024:,.1f}",
                f"{layer.cycles:,.0f}",
                f"{100 * layer.utilization:.0f} %",
                layer.bound,
                f"{layer.energy_pj['total'] * 1e-6:,.2f}",
                f"{(layer.accel_seconds + layer.host_seconds) * 1e6:,.1f}",
            )
        elif layer.host_seconds:
            table.add_row(
                escape(layer.name),
                layer.op,
                "host",
                layer.shape,
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                f"{layer.host_seconds * 1e6:,.1f}",
            )
    return table


def print_simulation(report, console: Console | None = None) -> None:
    console = console or Console()
    console.print(simulation_table(report))
    t = report.totals()
    c = t["counters"]
    console.print(
        f"accelerator {t['accelerator_cycles']:,.0f} cycles = {t['accelerator_seconds'] * 1e3:.3f} ms, "
        f"host {t['host_seconds'] * 1e3:.3f} ms, latency {t['latency_seconds'] * 1e3:.3f} ms"
    )
    console.print(
        f"energy {t['energy_joules'] * 1e6:,.1f} uJ, EDP {t['edp_joule_seconds']:.3e} J*s, "
        f"area {t['area_mm2']:.3f} mm2, DRAM {t['dram_bytes'] / 1024:,.1f} KiB"
    )
    if c:
        console.print(
            "counters: " + ", ".join(f"{key} {value:,}" for key, value in c.items()),
            highlight=False,
        )
