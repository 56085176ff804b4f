"""Time of the work left on the host CPU: `codesign.host_work.host_seconds` (the formula has its
home there, with the work it prices, as quantization needs it too to place narrow-group convs)."""

from __future__ import annotations

from codesign.host_work import host_seconds

__all__ = ["host_seconds"]
