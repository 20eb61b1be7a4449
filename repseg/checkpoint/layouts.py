"""Key layouts of the RepVGG checkpoints users hold, as data (REFERENCES section 3).

Every layout names the same tensors differently. A key is split into a location (the
stem, or block ``j`` of stage ``s``), a part (3x3 branch, 1x1 branch, identity BN, fused
conv, SE convs) and a leaf (``conv.weight``, ``bn.running_var``, ...). repseg's own
module names are the ``'repseg'`` layout; conversion goes through it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

# Parts of a block in repseg's naming. Conv+BN parts have leaves ``conv.*`` and ``bn.*``;
# the identity part is a bare BN; the others are plain convs with weight and bias.
CONV_BN_PARTS = ('conv3x3', 'conv1x1')
PARTS = ('conv3x3', 'conv1x1', 'identity', 'fused', 'se.down', 'se.up')
CLASSIFIER = 'head.fc'


@dataclass(frozen=True)
class KeyLayout:
    """How one implementation names RepVGG tensors.

    ``block`` is a format string with ``{stage}`` (numbered from ``first_stage``) and
    ``{index}`` (block within the stage); ``parts`` maps repseg's part names to this layout's; ``norm`` is the
    name of the BN inside a conv+BN part; ``prefix`` is put before every non-classifier
    key (mmpretrain's ``backbone.``).
    """

    name: str
    stem: str
    block: str
    parts: dict[str, str]
    classifier: str
    norm: str = 'bn'
    prefix: str = ''
    first_stage: int = 1
    _block_regex: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        pattern = re.escape(self.block).replace(r'\{stage\}', r'(?P<stage>\d+)')
        pattern = pattern.replace(r'\{index\}', r'(?P<index>\d+)')
        object.__setattr__(self, '_block_regex', re.compile(pattern + r'\.'))

    # repseg -> layout -------------------------------------------------------------
    def export_key(self, key: str) -> str:
        """Rename a repseg key (``stages.1.3.conv3x3.bn.weight``) to this layout."""
        if key.startswith(CLASSIFIER + '.'):
            return self.classifier + key[len(CLASSIFIER):]
        location, rest = _split_repseg_location(key)
        if location is None:
            raise KeyError(f"not a RepVGG key: {key!r}")
        where = self.stem if location == 'stem' else self.block.format(
            stage=location[0] + self.first_stage, index=location[1])
        part = next((p for p in PARTS if rest.startswith(p + '.')), None)
        if part is None:
            raise KeyError(f"not a RepVGG key: {key!r}")
        leaf = rest[len(part) + 1:]
        if part in CONV_BN_PARTS and leaf.startswith('bn.'):
            leaf = self.norm + leaf[2:]
        return f'{self.prefix}{where}.{self.parts[part]}.{leaf}'

    # layout -> repseg -------------------------------------------------------------
    def import_key(self, key: str) -> Optional[str]:
        """Rename a key of this layout to repseg's naming; None if it does not fit."""
        if key.startswith(self.classifier + '.'):
            return CLASSIFIER + key[len(self.classifier):]
        if self.prefix and key.startswith(self.prefix):
            key = key[len(self.prefix):]
        if key.startswith(self.stem + '.'):
            where, rest = 'stem', key[len(self.stem) + 1:]
        else:
            match = self._block_regex.match(key)
            if match is None:
                return None
            stage = int(match['stage']) - self.first_stage
            if not 0 <= stage <= 3:
                return None
            where, rest = f"stages.{stage}.{match['index']}", key[match.end():]
        for part, theirs in sorted(self.parts.items(), key=lambda kv: -len(kv[1])):
            if rest.startswith(theirs + '.'):
                return f'{where}.{part}.{_import_leaf(part, rest[len(theirs) + 1:], self.norm)}'
        return None


def _import_leaf(part: str, leaf: str, norm: str) -> str:
    if part in CONV_BN_PARTS and leaf.startswith(norm + '.'):
        return 'bn' + leaf[len(norm):]
    return leaf


_REPSEG_BLOCK = re.compile(r'stages\.(\d+)\.(\d+)\.')


def _split_repseg_location(key: str):
    if key.startswith('stem.'):
        return 'stem', key[5:]
    match = _REPSEG_BLOCK.match(key)
    if match is None:
        return None, key
    return (int(match[1]), int(match[2])), key[match.end():]


LAYOUTS: dict[str, KeyLayout] = {layout.name: layout for layout in (
    KeyLayout('repseg', stem='stem', block='stages.{stage}.{index}', classifier=CLASSIFIER,
              first_stage=0, parts={p: p for p in PARTS}),
    KeyLayout('official', stem='stage0', block='stage{stage}.{index}', classifier='linear',
              parts={'conv3x3': 'rbr_dense', 'conv1x1': 'rbr_1x1', 'identity': 'rbr_identity',
                     'fused': 'rbr_reparam', 'se.down': 'se.down', 'se.up': 'se.up'}),
    KeyLayout('timm', stem='stem', block='stages.{stage}.{index}', classifier='head.fc',
              first_stage=0, parts={'conv3x3': 'conv_kxk', 'conv1x1': 'conv_1x1', 'identity': 'identity',
                     'fused': 'reparam_conv', 'se.down': 'attn.fc1', 'se.up': 'attn.fc2'}),
    KeyLayout('mmpretrain', stem='stem', block='stage_{stage}.{index}', classifier='head.fc',
              norm='norm', prefix='backbone.',
              parts={'conv3x3': 'branch_3x3', 'conv1x1': 'branch_1x1', 'identity': 'branch_norm',
                     'fused': 'branch_reparam', 'se.down': 'se_layer.conv1.conv',
                     'se.up': 'se_layer.conv2.conv'}),
)}
