"""mmengine's DDP wrapper for CPU processes (gloo) as well as GPUs.

mmengine's Runner builds the wrapper named by ``model_wrapper_cfg`` with
``device_ids=[LOCAL_RANK]``; PyTorch's ``DistributedDataParallel`` refuses ``device_ids``
for a module on the CPU. :class:`DeviceAwareDDP` drops them there and behaves exactly like
``MMDistributedDataParallel`` on GPUs. ``repseg.mmseg.runner`` selects it for every
distributed run (``model_wrapper_cfg=dict(type='DeviceAwareDDP', ...)``). It lives in
mmengine's root registry: the Runner looks the wrapper type up there, not in mmseg's.
"""
from __future__ import annotations

import torch.nn as nn
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS


def _on_cpu(module: nn.Module) -> bool:
    param = next(module.parameters(), None)
    return param is None or param.device.type == 'cpu'


@MODEL_WRAPPERS.register_module()
class DeviceAwareDDP(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` that passes ``device_ids=None`` for CPU modules.

    Args:
        module: the model, already on its device (the Runner moves it first).
        detect_anomalous_params: as in ``MMDistributedDataParallel``.
        **kwargs: ``DistributedDataParallel`` arguments; ``device_ids`` and
            ``output_device`` are ignored for a CPU module.
    """

    def __init__(self, module: nn.Module, detect_anomalous_params: bool = False, **kwargs):
        if _on_cpu(module):
            kwargs['device_ids'] = None
            kwargs.pop('output_device', None)
        super().__init__(module, detect_anomalous_params=detect_anomalous_params, **kwargs)
