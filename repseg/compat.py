"""Compatibility shims for the OpenMMLab stack, applied once when repseg is imported.

1. ``mmcv.ops`` on mmcv-lite. mmsegmentation 1.2 imports ``mmcv.ops`` without a guard
   in four modules (``utils/mask_classification.py``, ``models/utils/point_sample.py``,
   ``models/decode_heads/san_head.py``, ``models/losses/focal_loss.py``), so on
   mmcv-lite (no compiled ``mmcv._ext``) ``import mmseg.models`` fails although PSPNet
   needs no compiled op. When, and only when, the compiled ops are absent, we register a
   stand-in ``mmcv.ops`` module: ``point_sample`` comes from mmcv's own pure-torch
   ``mmcv/ops/point_sample.py``; any other op is a placeholder that raises a clear
   error if it is called. With full mmcv nothing is touched.

2. Resuming mmengine checkpoints under torch >= 2.6, where ``torch.load`` defaults to
   ``weights_only=True``. mmengine 0.10.7 stores its message hub (``HistoryBuffer``
   objects holding numpy arrays) in the checkpoint's ``meta``; we allow-list exactly the
   globals those objects pickle to, instead of turning the safety off.

3. ``distutils`` on Python >= 3.12, which removed it: every mmengine Runner calls
   ``collect_env``, which imports ``distutils.errors``. setuptools normally supplies the
   module; only where nothing does, a stand-in holding the one error class mmengine
   catches is registered.
"""
from __future__ import annotations

import importlib.util
import sys
import types
import warnings


class MissingCompiledOp:
    """Placeholder for an mmcv op that needs the compiled extension."""

    def __init__(self, name: str):
        self.__name__ = self.__qualname__ = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(
            f"mmcv.ops.{self.__name__} needs mmcv's compiled ops, but mmcv-lite is installed. "
            "repseg's PSPNet does not use it; for models that do, install full mmcv "
            "(pip install 'mmcv>=2.0.0rc4,<2.2.0', built against your torch).")


def _has_compiled_mmcv_ops() -> bool:
    return importlib.util.find_spec('mmcv._ext') is not None


def _load_pure_torch_point_sample(mmcv_dir: str) -> types.ModuleType:
    path = f'{mmcv_dir}/ops/point_sample.py'
    spec = importlib.util.spec_from_file_location('mmcv.ops.point_sample', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def install_mmcv_ops_stand_in() -> bool:
    """Register the stand-in ``mmcv.ops`` if mmcv lacks compiled ops. Returns whether it did."""
    if 'mmcv.ops' in sys.modules or importlib.util.find_spec('mmcv') is None:
        return False
    if _has_compiled_mmcv_ops():
        return False
    import mmcv

    ops = types.ModuleType('mmcv.ops', doc='repseg stand-in for mmcv.ops on mmcv-lite '
                                           '(see repseg/compat.py).')
    point_sample_module = _load_pure_torch_point_sample(mmcv.__path__[0])
    ops.point_sample = point_sample_module.point_sample
    ops.bilinear_grid_sample = point_sample_module.bilinear_grid_sample

    def missing_op(name: str):
        if name.startswith('__'):
            raise AttributeError(name)
        return MissingCompiledOp(name)

    ops.__getattr__ = missing_op
    # mmcv warns at import that mmcv-lite lacks this op; the placeholder above says it
    # when (if ever) the op is called, so the warning is only noise on every start.
    warnings.filterwarnings('ignore', message='Fail to import ``MultiScaleDeformableAttention``')
    sys.modules['mmcv.ops'] = ops
    sys.modules['mmcv.ops.point_sample'] = point_sample_module
    mmcv.ops = ops
    return True


def allow_mmengine_checkpoint_globals() -> None:
    """Let ``torch.load(weights_only=True)`` read mmengine's resume checkpoints."""
    import numpy as np
    import torch

    if not hasattr(torch.serialization, 'add_safe_globals'):
        return  # torch < 2.4 loads with weights_only=False by default
    try:
        from mmengine.logging.history_buffer import HistoryBuffer
    except ImportError:
        return
    torch.serialization.add_safe_globals([
        HistoryBuffer,
        getattr,  # HistoryBuffer pickles its statistics methods as getattr(HistoryBuffer, 'min')
        np.ndarray,
        np.dtype,
        np._core.multiarray._reconstruct,
        np._core.multiarray.scalar,
        *{type(np.dtype(kind)) for kind in ('f8', 'f4', 'i8', 'i4', 'u1', 'b1')},
    ])


def provide_distutils() -> bool:
    """Register a minimal ``distutils.errors`` if no ``distutils`` can be imported.

    Returns whether the stand-in was registered (never while setuptools provides one).
    """
    if importlib.util.find_spec('distutils') is not None:
        return False
    try:
        import setuptools  # noqa: F401  (installs its own distutils when it can)
    except ImportError:
        pass
    if importlib.util.find_spec('distutils') is not None:
        return False
    errors = types.ModuleType('distutils.errors', doc='repseg stand-in (repseg/compat.py)')

    class DistutilsPlatformError(Exception):
        """What mmengine's collect_env catches when no C compiler is found."""

    errors.DistutilsPlatformError = DistutilsPlatformError
    distutils = types.ModuleType('distutils', doc='repseg stand-in (repseg/compat.py)')
    distutils.errors = errors
    sys.modules['distutils'] = distutils
    sys.modules['distutils.errors'] = errors
    return True


def require_mmcv() -> None:
    """mmcv is an extra (lite or full, which clash); say how to get one if neither is there."""
    if importlib.util.find_spec('mmcv') is None:
        raise ImportError("repseg needs mmcv >= 2.0.0rc4, < 2.2.0: install "
                          "\"pip install 'repseg[lite]'\" (pure Python, enough for PSPNet) or "
                          "\"pip install 'repseg[full]'\" (compiled ops)")


def apply() -> None:
    require_mmcv()
    install_mmcv_ops_stand_in()
    allow_mmengine_checkpoint_globals()
    provide_distutils()
