"""Stratified sampling with a fixed seed: strata by record fields, sizes in proportion to the
strata (largest remainders), or a fixed fraction of each. Same input and seed, same sample."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from orchestr.arena.records import StepReport


def _stratum(rec: dict[str, Any], keys: list[str]) -> str:
    # JSON text so lists/dicts/None are valid, stable stratum labels.
    return json.dumps([rec.get(k) for k in keys], sort_keys=True, ensure_ascii=False)


def allocate(sizes: dict[str, int], n: int, min_per_stratum: int) -> dict[str, int]:
    """How many to draw from each stratum: min(n, all) in total, in proportion to the strata
    (largest remainders), each non-empty stratum at least `min_per_stratum` when n allows."""
    total = sum(sizes.values())
    n = min(n, total)
    if total == 0:
        return {s: 0 for s in sizes}
    floor_ = {s: min(c, min_per_stratum) for s, c in sizes.items()}
    if sum(floor_.values()) >= n:  # more strata than n: the biggest strata get their minimum
        order = sorted(sizes, key=lambda s: (-sizes[s], s))
        alloc, left = dict.fromkeys(sizes, 0), n
        for s in order:
            alloc[s] = min(floor_[s], left)
            left -= alloc[s]
        return alloc
    quotas = {s: n * c / total for s, c in sizes.items()}
    alloc = {s: max(floor_[s], math.floor(q)) for s, q in quotas.items()}
    # Too many (minimums lifted small strata): take back from those furthest above their quota.
    while sum(alloc.values()) > n:
        s = max((s for s in alloc if alloc[s] > floor_[s]), key=lambda s: (alloc[s] - quotas[s], s))
        alloc[s] -= 1
    # Too few (rounding down): give to the largest remainders that still have records.
    by_remainder = sorted(sizes, key=lambda s: (-(quotas[s] - alloc[s]), s))
    while sum(alloc.values()) < n:
        for s in by_remainder:
            if alloc[s] < sizes[s] and sum(alloc.values()) < n:
                alloc[s] += 1
    return alloc


def sample_records(records: list[dict[str, Any]], cfg: Any) -> tuple[list[dict[str, Any]], StepReport]:
    if (cfg.n is None) == (cfg.fraction is None):
        raise ValueError("clean.sample: set exactly one of n or fraction (the other null)")
    if cfg.fraction is not None and not 0 < cfg.fraction <= 1:
        raise ValueError(f"clean.sample.fraction={cfg.fraction}: expected 0 < fraction <= 1")
    if cfg.n is not None and cfg.n < 0:
        raise ValueError(f"clean.sample.n={cfg.n}: expected >= 0")
    keys = list(cfg.by)
    strata: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        strata.setdefault(_stratum(rec, keys), []).append(i)
    sizes = {s: len(ix) for s, ix in strata.items()}
    if cfg.fraction is not None:
        alloc = {s: max(min(c, cfg.min_per_stratum), round(c * cfg.fraction)) for s, c in sizes.items()}
    else:
        alloc = allocate(sizes, cfg.n, cfg.min_per_stratum)
    rng = np.random.default_rng(cfg.seed)
    chosen: list[int] = []
    for s in sorted(strata):  # fixed order: the draw depends on the seed only
        chosen.extend(rng.choice(strata[s], size=alloc[s], replace=False).tolist())
    chosen.sort()  # keep the input order
    report = StepReport("sample", read=len(records), kept=len(chosen))
    report.drop("not_sampled", len(records) - len(chosen))
    for s, k in sorted(alloc.items()):
        report.tag(f"stratum {s}", k)
    return [records[i] for i in chosen], report
