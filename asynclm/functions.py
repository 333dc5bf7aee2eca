"""Function implementations and latency models for the BFCL functions the executor runs.

BFCL describes hundreds of functions; only the computational ones can be implemented honestly
offline, so :data:`REAL_IMPLEMENTATIONS` holds real Python code for those (sums of multiples,
areas, physics formulas, ...). Every other function gets :func:`simulated_result`: a deterministic
echo that says it is simulated. Execution *time* always comes from a :class:`LatencyModel` (the
paper's setting: 30-500 ms, mean 110 ms), because the real bodies take microseconds.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LatencyModel:
    """Shifted exponential latency clipped to [min_s, max_s] with the given mean (before clipping).

    Per-function overrides (``fixed``) pin a name to an exact latency, e.g. a slow search API. The
    draw for a call depends only on (seed, function name, key); the executor's key is the call's body
    and its occurrence, so every system compared (Sync, Async, ...) sees the same latency for the same
    call whatever order it emits the calls in.
    """

    min_s: float = 0.030
    mean_s: float = 0.110
    max_s: float = 0.500
    scale: float = 1.0  # multiply every latency (e.g. to express the paper's ms on a slower model)
    fixed: dict[str, float] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.min_s <= self.mean_s <= self.max_s:
            raise ValueError(f"latency model needs 0 <= min <= mean <= max, got {self}")

    def sample(self, name: str, key: str) -> float:
        if name in self.fixed:
            return self.fixed[name] * self.scale
        rng = random.Random(zlib.crc32(f"{self.seed}|{name}|{key}".encode()))
        excess = self.mean_s - self.min_s
        draw = self.min_s + (rng.expovariate(1.0 / excess) if excess > 0 else 0.0)
        return min(draw, self.max_s) * self.scale

    def expected(self, name: str) -> float:
        """Expected latency (clipping ignored): the trap handler's estimate of a pending call."""
        return self.fixed.get(name, self.mean_s) * self.scale


def simulated_result(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Stand-in result for a function with no offline implementation (short, marked as simulated)."""
    return {"status": "ok", "simulated": True}


def _sum_of_multiples(lower_limit: int, upper_limit: int, multiples: list[int]) -> int:
    return sum(n for n in range(lower_limit, upper_limit + 1) if any(n % m == 0 for m in multiples))


def _product_of_primes(count: int) -> int:
    primes: list[int] = []
    n = 2
    while len(primes) < count:
        if all(n % p for p in primes if p * p <= n):
            primes.append(n)
        n += 1
    return math.prod(primes)


def _em_force(b_field: float, area: float, d_time: float) -> float:
    return b_field * area / d_time  # Faraday: EMF = dPhi/dt


_RESISTIVITY = {"copper": 1.68e-8, "aluminum": 2.65e-8, "silver": 1.59e-8, "gold": 2.44e-8, "iron": 9.7e-8}


def _resistance(length: float, area: float, resistivity: str = "copper") -> float:
    return _RESISTIVITY[resistivity.lower()] * length / area


REAL_IMPLEMENTATIONS: dict[str, Callable[..., Any]] = {
    "math_toolkit.sum_of_multiples": _sum_of_multiples,
    "math_toolkit.product_of_primes": _product_of_primes,
    "area_rectangle.calculate": lambda length, breadth: length * breadth,
    "area_circle.calculate": lambda radius: math.pi * radius**2,
    "circle.calculate_area": lambda radius: math.pi * radius**2,
    "circle.calculate_circumference": lambda diameter: math.pi * diameter,
    "volume_cylinder.calculate": lambda radius, height: math.pi * radius**2 * height,
    "calculate_em_force": _em_force,
    "calculate_resistance": _resistance,
    "math.factorial": lambda number: math.factorial(number),
    "math.hypot": lambda x, y, z=0: math.hypot(x, y, z),
    "math.gcd": lambda num1, num2: math.gcd(num1, num2),
    "math.lcm": lambda num1, num2: math.lcm(num1, num2),
}
