"""Cityscapes data: layout constants, preparation, checks and a toy city.

Kept light on purpose: importing it pulls in neither mmseg nor torch, so the
data tools run on a machine with only numpy and OpenCV (cityscapesscripts is
needed only to rasterise polygon annotations and for the official evaluation).
"""
from .cityscapes_layout import (CLASSES, IGNORE_INDEX, NUM_CLASSES, PALETTE)

__all__ = ['CLASSES', 'PALETTE', 'NUM_CLASSES', 'IGNORE_INDEX']
