"""repseg: RepVGG (arXiv 2101.03697) for classification and semantic segmentation.

``repseg.compat`` runs first: it makes mmsegmentation importable on mmcv-lite and
mmengine checkpoints resumable on torch >= 2.6 (see its docstring).
"""
from . import compat

compat.apply()

from .checkpoint import load_checkpoint  # noqa: E402
from .classification import classify  # noqa: E402  (imports mmpretrain on first call)
from .models.arch import ARCH_SETTINGS, ArchSpec  # noqa: E402
from .models.block import RepVGGBlock  # noqa: E402
from .models.reparam import reparameterize  # noqa: E402
from .models.repvgg import RepVGG, create_model  # noqa: E402

__version__ = '0.1.0'

__all__ = ['ARCH_SETTINGS', 'ArchSpec', 'RepVGG', 'RepVGGBlock', 'classify', 'create_model',
           'load_checkpoint', 'reparameterize', '__version__']

from . import mmseg  # noqa: E402,F401  (registers the backbone in mmseg)
