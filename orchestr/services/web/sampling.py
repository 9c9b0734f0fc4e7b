"""Drawing the two contestants of an anonymous battle."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence


class NoBattlePair(ValueError):
    """Fewer than two models can meet (too few served, or every pair excluded)."""


def battle_pair(
    models: Sequence[str],
    weights: Mapping[str, float] | None = None,
    excluded_pairs: Sequence[Sequence[str]] = (),
    rng: random.Random | None = None,
) -> tuple[str, str]:
    """Two distinct models, the first drawn by weight, the second by weight among its allowed
    opponents; the sides are then shuffled so the heavier model is not always on the left.
    Models missing from ``weights`` weigh 1.0; a weight of 0 removes a model from battles."""
    rng = rng or random.Random()
    weights = weights or {}
    excluded = {frozenset(p) for p in excluded_pairs if len(p) == 2}
    pool = [m for m in dict.fromkeys(models) if weights.get(m, 1.0) > 0]

    def opponents(m: str) -> list[str]:
        return [o for o in pool if o != m and frozenset((m, o)) not in excluded]

    firsts = [m for m in pool if opponents(m)]
    if not firsts:
        raise NoBattlePair(
            f"an anonymous battle needs two models that may meet; available: {list(models) or 'none'}"
        )
    a = rng.choices(firsts, weights=[weights.get(m, 1.0) for m in firsts])[0]
    rivals = opponents(a)
    b = rng.choices(rivals, weights=[weights.get(m, 1.0) for m in rivals])[0]
    return (a, b) if rng.random() < 0.5 else (b, a)
