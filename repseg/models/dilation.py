"""Dilation plans for segmentation backbones (paper section 4.3), written once as data.

Both plans drop the stride of code stages 3 and 4 (output stride 8). ``'full'`` dilates
every 3x3 of stage 3 by 2 and of stage 4 by 4. ``'fast'`` dilates only the last five
layers: the last four blocks of stage 3 (by 2) and the single block of stage 4 (by 4).
"""
from __future__ import annotations

from typing import NamedTuple, Optional


class DilatedStage(NamedTuple):
    """Stage ``stage`` (1-4) runs at stride 1; its last ``last_n`` blocks (all if None)
    use ``dilation``."""

    stage: int
    dilation: int
    last_n: Optional[int] = None


DILATION_PLANS: dict[str, tuple[DilatedStage, ...]] = {
    'full': (DilatedStage(3, 2), DilatedStage(4, 4)),
    'fast': (DilatedStage(3, 2, last_n=4), DilatedStage(4, 4, last_n=1)),
}


def plan_strides_and_dilations(num_blocks: tuple[int, ...], mode: Optional[str]):
    """Per-stage strides and per-block dilations for a dilation ``mode``.

    Returns ``(strides, dilations)``: ``strides[i]`` is the stride of stage ``i + 1``'s
    first block, ``dilations[i]`` a tuple with one dilation per block of that stage.
    """
    strides = [2] * len(num_blocks)
    dilations = [[1] * n for n in num_blocks]
    if mode is None:
        return tuple(strides), tuple(map(tuple, dilations))
    if mode not in DILATION_PLANS:
        raise ValueError(f"unknown dilation mode {mode!r}; choose None, "
                         + ", ".join(repr(m) for m in DILATION_PLANS))
    for rule in DILATION_PLANS[mode]:
        index = rule.stage - 1
        strides[index] = 1
        count = num_blocks[index] if rule.last_n is None else rule.last_n
        for block in range(num_blocks[index] - count, num_blocks[index]):
            dilations[index][block] = rule.dilation
    return tuple(strides), tuple(map(tuple, dilations))
