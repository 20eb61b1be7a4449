"""Checkpoint layouts (official, timm, mmpretrain, repseg), sources and the loader."""
from .layouts import LAYOUTS, KeyLayout
from .loader import (CheckpointError, CheckpointMismatchError, LoadReport, detect_layout,
                     export_state_dict, load_checkpoint, read_state_dict)
from .sources import CheckpointSourceError, resolve_checkpoint

__all__ = ['LAYOUTS', 'KeyLayout', 'CheckpointError', 'CheckpointMismatchError',
           'CheckpointSourceError', 'LoadReport', 'detect_layout', 'export_state_dict',
           'load_checkpoint', 'read_state_dict', 'resolve_checkpoint']
