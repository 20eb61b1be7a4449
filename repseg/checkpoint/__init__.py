"""Checkpoint layouts (official, timm, mmpretrain, repseg) and the loader."""
from .layouts import LAYOUTS, KeyLayout
from .loader import (CheckpointError, CheckpointMismatchError, LoadReport, detect_layout,
                     export_state_dict, load_checkpoint, read_state_dict)

__all__ = ['LAYOUTS', 'KeyLayout', 'CheckpointError', 'CheckpointMismatchError', 'LoadReport',
           'detect_layout', 'export_state_dict', 'load_checkpoint', 'read_state_dict']
