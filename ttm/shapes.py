"""Whether a set of tensor shapes fits an architecture's, without torch: the API compares an uploaded file's
recorded shapes (ttm.inspection) with the architecture's expected ones; the trainer's strict load says the same."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

Shapes = Mapping[str, Sequence[int]]


def shape_mismatch(expected: Shapes, got: Shapes, what: str) -> str | None:
    """None when `got` has exactly `expected`'s keys and shapes; else why not, naming the first mismatching key and
    both shapes, or the missing and unexpected keys."""
    for key, shape in expected.items():
        if key in got and tuple(got[key]) != tuple(shape):
            return (f"{what} do not fit the architecture: first mismatch at {key!r}: file has {tuple(got[key])}, "
                    f"model expects {tuple(shape)}")
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    if not missing and not unexpected:
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (first: {missing[0]!r})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]!r})")
    return f"{what} do not fit the architecture: keys " + ", ".join(parts)
