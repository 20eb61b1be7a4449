"""ImageNet-style classification with repseg's RepVGG on mmpretrain's stack.

mmpretrain (the ``cls`` extra: ``pip install 'repseg[cls]'``) supplies the classifier
(``ImageClassifier``, ``GlobalAveragePooling``, ``LinearClsHead``), the datasets (class
folders and ``meta/*.txt`` lists), the transforms, mixup, label smoothing and the
``Accuracy`` metric; repseg supplies the backbone (so every checkpoint layout and the
fusion work) and the checks and guards of its tools. Importing this package does not
import mmpretrain: :func:`require_mmpretrain` does, with a message naming the extra.
"""
from __future__ import annotations

from ..errors import UserError

EXTRA_HINT = ("classification needs mmpretrain: pip install 'repseg[cls]' "
              "(or pip install 'mmpretrain>=1.2,<1.3')")


class MissingExtraError(UserError, ImportError):
    """An optional dependency of repseg that is not installed."""


def require_mmpretrain():
    """Import mmpretrain (and register repseg's backbone in its registry); a missing
    package raises :class:`MissingExtraError` naming the ``cls`` extra."""
    try:
        import mmpretrain  # noqa: F401
    except ImportError as error:
        raise MissingExtraError(f'{EXTRA_HINT}; importing it failed: {error}') from None
    from . import model  # noqa: F401  (registers RepsegRepVGG in mmpretrain's MODELS)
    return mmpretrain


def classify(*args, **kwargs):
    """:func:`repseg.classification.predict.classify` (imports mmpretrain on first use)."""
    require_mmpretrain()
    from .predict import classify as run

    return run(*args, **kwargs)




def is_classification_config(config) -> bool:
    """Whether the config file ``config`` builds a classifier (mmpretrain's scope or an
    ``ImageClassifier``), so ``tools/test.py`` and ``tools/train.py`` run it here."""
    from ..mmseg.config_file import read_config

    cfg = read_config(config)
    return (cfg.get('default_scope') == 'mmpretrain'
            or (cfg.get('model') or {}).get('type') == 'ImageClassifier')


__all__ = ['MissingExtraError', 'classify', 'is_classification_config', 'require_mmpretrain']
