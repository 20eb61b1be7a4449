"""The RepVGG family as one table (paper Tables 2-3, plus D2se)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidArgumentError, InvalidArgumentTypeError


@dataclass(frozen=True)
class ArchSpec:
    """Depth and width of one RepVGG variant.

    Attributes:
        num_blocks: blocks in stages 1-4 (the stem is stage 0, one block).
        width_a: multiplier of stages 1-3 (and of the stem, capped at 64 channels).
        width_b: multiplier of stage 4.
        groups: groups of the grouped layers (1 = none). Counting the stem as layer 0,
            layers 2, 4, ..., 26 are grouped.
        use_se: squeeze-excitation in every block (D2se).
    """

    num_blocks: tuple[int, int, int, int]
    width_a: float
    width_b: float
    groups: int = 1
    use_se: bool = False

    @property
    def stem_channels(self) -> int:
        return min(64, int(64 * self.width_a))

    @property
    def stage_channels(self) -> tuple[int, int, int, int]:
        a, b = self.width_a, self.width_b
        return int(64 * a), int(128 * a), int(256 * a), int(512 * b)

    def groups_of_layer(self, layer: int) -> int:
        """Groups of layer ``layer`` (stem = 0, first block of stage 1 = 1)."""
        return self.groups if layer in GROUPED_LAYERS else 1


GROUPED_LAYERS = frozenset(range(2, 27, 2))

_A_BLOCKS = (2, 4, 14, 1)
_B_BLOCKS = (4, 6, 16, 1)

ARCH_SETTINGS: dict[str, ArchSpec] = {
    'A0': ArchSpec(_A_BLOCKS, 0.75, 2.5),
    'A1': ArchSpec(_A_BLOCKS, 1, 2.5),
    'A2': ArchSpec(_A_BLOCKS, 1.5, 2.75),
    'B0': ArchSpec(_B_BLOCKS, 1, 2.5),
    'B1': ArchSpec(_B_BLOCKS, 2, 4),
    'B1g2': ArchSpec(_B_BLOCKS, 2, 4, groups=2),
    'B1g4': ArchSpec(_B_BLOCKS, 2, 4, groups=4),
    'B2': ArchSpec(_B_BLOCKS, 2.5, 5),
    'B2g2': ArchSpec(_B_BLOCKS, 2.5, 5, groups=2),
    'B2g4': ArchSpec(_B_BLOCKS, 2.5, 5, groups=4),
    'B3': ArchSpec(_B_BLOCKS, 3, 5),
    'B3g2': ArchSpec(_B_BLOCKS, 3, 5, groups=2),
    'B3g4': ArchSpec(_B_BLOCKS, 3, 5, groups=4),
    'D2se': ArchSpec((8, 14, 24, 1), 2.5, 5, use_se=True),
}


def canonical_arch_name(arch: str) -> str:
    """``'RepVGG-B2'``, ``'repvgg_b2'`` and ``'b2'`` all name ``'B2'``."""
    if not isinstance(arch, str):
        raise InvalidArgumentTypeError(
            f"RepVGG arch must be a string such as 'B2', got {type(arch).__name__}")
    name = arch.strip()
    for prefix in ('repvgg-', 'repvgg_', 'repvgg'):
        if name.lower().startswith(prefix):
            name = name[len(prefix):]
            break
    by_lower = {key.lower(): key for key in ARCH_SETTINGS}
    if name.lower() not in by_lower:
        raise InvalidArgumentError(
            f"unknown RepVGG arch {arch!r}; choose from {', '.join(ARCH_SETTINGS)}")
    return by_lower[name.lower()]


def get_arch(arch: str) -> ArchSpec:
    return ARCH_SETTINGS[canonical_arch_name(arch)]
