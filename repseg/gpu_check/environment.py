"""The ``environment`` step: versions, the device, and which packages import."""
from __future__ import annotations

import importlib
import os
import platform
import shutil
import subprocess
import sys

#: Modules the run needs (mmcv and mmseg come from the wheels on the GPU image).
#: ``torch.utils.cpp_extension`` (which imports setuptools) is what mmengine's
#: environment report imports on CUDA, in every Runner; repseg's distutils stand-in does
#: not cover it.
PROBED_IMPORTS = ('torch', 'torchvision', 'numpy', 'mmengine', 'mmcv', 'mmseg', 'repseg',
                  'onnx', 'onnxruntime', 'timm', 'cv2', 'distutils.errors', 'setuptools',
                  'torch.utils.cpp_extension', 'pytest')


def probe_environment() -> dict:
    """Versions, the device, and for each of :data:`PROBED_IMPORTS` ``True`` or the
    import error (reported, not raised)."""
    imports = {}
    for name in PROBED_IMPORTS:
        try:
            importlib.import_module(name)
            imports[name] = True
        except Exception as error:  # noqa: BLE001
            imports[name] = f'{type(error).__name__}: {error}'
    import numpy
    import torch

    env = dict(python=platform.python_version(), torch=torch.__version__,
               numpy=numpy.__version__, cuda=torch.version.cuda,
               cuda_available=torch.cuda.is_available(), cpu_count=os.cpu_count(),
               imports=imports, c_compiler=_c_compiler())
    for package in ('mmengine', 'mmcv', 'mmseg', 'onnxruntime', 'timm'):
        env[f'{package}_version'] = getattr(sys.modules.get(package), '__version__', None)
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        env.update(device_name=properties.name,
                   gpu_memory_gb=round(properties.total_memory / 2 ** 30, 1),
                   multiprocessors=properties.multi_processor_count,
                   cudnn=torch.backends.cudnn.version(), nvidia_smi=_nvidia_smi())
    else:
        from ..speed.timing import cpu_model_name

        env['device_name'] = cpu_model_name()
    return env


def _nvidia_smi() -> str:
    try:
        return subprocess.run(
            ['nvidia-smi', '--query-gpu=name,driver_version,memory.total,clocks.max.sm',
             '--format=csv,noheader'], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as error:
        return f'not run: {error}'


def _c_compiler() -> str:
    """The C compiler triton (torch.compile, the compiled resize-argmax) would call, or
    why there is none: without one those paths fall back to eager."""
    for name in (os.environ.get('CC'), 'cc', 'gcc', 'clang'):
        path = shutil.which(name) if name else None
        if path:
            return path
    return 'none found (CC, cc, gcc, clang): torch.compile paths will fall back'
