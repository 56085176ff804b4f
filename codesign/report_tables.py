"""Terminal tables (rich) for compile results."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from codesign.lowering import LayerPlan


def placement_table(plans: list[LayerPlan], hw) -> Table:
    table = Table(title=f"Placement on {hw.name} ({hw.gemm_shape} GEMM core)", title_justify="left")
    for column in ("layer", "op", "runs on", "shape", "MACs", "tile (n,co,ci,h,w)", "inp/wgt/acc KiB"):
        table.add_column(column, justify="right" if column == "MACs" else "left")
    for plan in plans:
        tile = footprint = shape = macs = ""
        if plan.shape is not None:
            shape, macs = plan.shape.describe(), f"{plan.shape.macs:,}"
        if plan.tiling is not None:
            t = plan.tiling
            tile = f"{t.n_tile},{t.co_tile},{t.ci_tile},{t.h_tile},{t.w_tile}"
            footprint = "/".join(f"{b / 1024:.1f}" for b in plan.footprint.values())
        where = "[green]accelerator[/]" if plan.placement == "accel" else "host"
        table.add_row(plan.name, plan.op, where, shape, macs, tile, footprint)
    return table


def print_placement(plans: list[LayerPlan], hw, console: Console | None = None) -> None:
    console = console or Console()
    console.print(placement_table(plans, hw))
    on_accel = [p for p in plans if p.placement == "accel"]
    accel_macs = sum(p.shape.macs for p in on_accel)
    total_macs = accel_macs + sum(p.shape.macs for p in plans if p.placement == "host" and p.shape)
    share = 100 * accel_macs / total_macs if total_macs else 0.0
    console.print(f"{len(on_accel)} of {len(plans)} layers on the accelerator, {share:.1f} % of MACs")
