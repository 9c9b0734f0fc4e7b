"""Length distributions of the random workload, written ``KIND:PARAMS``:

* ``fixed:N`` (or just ``N``): always N;
* ``uniform:LO:HI``: uniform integers, both ends included;
* ``lognormal:MEDIAN:SIGMA[:MAX]``: a log-normal around MEDIAN (sigma of the log), at least 1,
  at most MAX (default 8 x MEDIAN): the long tail real prompt lengths have.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class LengthDist:
    kind: str
    params: tuple[float, ...]

    def sample(self, rng: random.Random, n: int) -> list[int]:
        if self.kind == "fixed":
            return [int(self.params[0])] * n
        if self.kind == "uniform":
            lo, hi = (int(x) for x in self.params)
            return [rng.randint(lo, hi) for _ in range(n)]
        median, sigma, top = self.params
        return [max(1, min(int(top), round(rng.lognormvariate(math.log(median), sigma)))) for _ in range(n)]

    def __str__(self) -> str:
        return ":".join([self.kind, *(f"{p:g}" for p in self.params)])


def parse_length_dist(text: str) -> LengthDist:
    """``uniform:64:512`` -> LengthDist; ValueError with the accepted forms for anything else."""
    forms = "fixed:N, uniform:LO:HI or lognormal:MEDIAN:SIGMA[:MAX]"
    kind, *rest = text.strip().split(":")
    try:
        if not rest and kind.isdigit():
            kind, rest = "fixed", [kind]
        values = [float(x) for x in rest]
    except ValueError:
        raise ValueError(f"{text!r}: numbers expected ({forms})") from None
    if kind == "fixed" and len(values) == 1 and values[0] >= 1:
        return LengthDist("fixed", (values[0],))
    if kind == "uniform" and len(values) == 2 and 1 <= values[0] <= values[1]:
        return LengthDist("uniform", tuple(values))
    if kind == "lognormal" and len(values) in (2, 3) and values[0] >= 1 and values[1] > 0:
        top = values[2] if len(values) == 3 else 8 * values[0]
        if top >= values[0]:
            return LengthDist("lognormal", (values[0], values[1], top))
    raise ValueError(f"{text!r}: not a length distribution ({forms}; lengths >= 1)")
