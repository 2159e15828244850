"""Device time per request, converted to dollars.

Each forward pass is timed and charged to the rows it computed, split evenly among them, so the
charges of all requests add up to the device time the engine actually spent.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

# A rented H100 costs about $2–3 per hour (seed articles: RunPod PCIe $1.99, SXM $2.69, Lambda $3.29);
# a 2-vCPU cloud VM about $0.10.
DEFAULT_GPU_USD_PER_HOUR = 2.69
DEFAULT_CPU_USD_PER_HOUR = 0.10


def default_rate(device: torch.device) -> float:
    return DEFAULT_GPU_USD_PER_HOUR if device.type == "cuda" else DEFAULT_CPU_USD_PER_HOUR


class Meter:
    """Times passes and keeps the engine-wide total, so tests can check the shares add up."""

    def __init__(self, device: torch.device, usd_per_hour: float) -> None:
        self.device = device
        self.usd_per_hour = usd_per_hour
        self.total_seconds = 0.0

    def start(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def stop(self, started: float, accounts: Sequence[list[float]]) -> float:
        """Ends a pass and adds an equal share of its time to each account (a one-item list)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - started
        self.total_seconds += elapsed
        share = elapsed / max(1, len(accounts))
        for account in accounts:
            account[0] += share
        return elapsed

    def cost_usd(self, device_seconds: float) -> float:
        return device_seconds / 3600.0 * self.usd_per_hour
