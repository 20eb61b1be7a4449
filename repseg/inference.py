"""Make a built model ready for fast inference: fuse, eval, half precision, channels-last.

:func:`prepare_for_inference` is what ``tools/test.py --fp16``, ``tools/infer.py`` and
``tools/benchmark.py`` call; :func:`prediction_agreement` measures how often two models
(fp32 and fp16, train-time and fused, ...) predict the same class per pixel.

Input casting: mmseg's ``SegDataPreProcessor`` always produces float32 NCHW tensors
(it calls ``.float()`` before normalizing). Rather than changing it, a forward pre-hook
on the backbone casts the normalized batch to the model's dtype and memory format, so
``test_step``/``predict``/``_forward`` and both the 'whole' and 'slide' inference modes
work unchanged. The data preprocessor itself stays in float32 (its mean and std would
lose precision in fp16); the logits come out in the model's dtype.

Half precision on CPU: torch 2.14 runs float16 convolutions on CPU (measured on a
2-core Sapphire Rapids: about 1.3-1.5x slower than float32 there), so fp16 paths are
testable without a GPU, only slowly; bfloat16 is much faster on CPUs with AMX
(``half_dtype=torch.bfloat16``) but it is not what the GPU runs.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
from mmengine.logging import print_log

from .errors import InvalidArgumentError
from .mmseg.fast_psp import use_fast_pyramid_pooling
from .models.reparam import reparameterize

_HOOK_MARK = '_repseg_input_cast'

Image = Union[np.ndarray, torch.Tensor]


def check_device(device: str) -> torch.device:
    """The :class:`torch.device` named by ``device`` ('cpu', 'cuda', 'cuda:1', ...),
    refused with a clear message when it cannot be used on this machine (instead of
    torch's "Found no NVIDIA driver" at the first tensor moved there)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidArgumentError(f"unknown device {device!r}; use e.g. 'cpu', 'cuda' or "
                                   "'cuda:1'") from None
    if parsed.type == 'cuda':
        if not torch.cuda.is_available():
            build = (f'built with CUDA {torch.version.cuda}, but no GPU or driver was found'
                     if torch.version.cuda else 'built without CUDA (a CPU-only build)')
            raise InvalidArgumentError(
                f'device {device!r}: CUDA is not available on this machine (torch '
                f'{torch.__version__} is {build}); run on the CPU with --device cpu')
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise InvalidArgumentError(
                f"device {device!r}: this machine has {count} CUDA device(s), "
                f"'cuda:0' to 'cuda:{count - 1}'")
    return parsed


def _input_module(model: nn.Module) -> nn.Module:
    """Where inputs enter the network: a segmentor's backbone, else the model itself."""
    backbone = getattr(model, 'backbone', None)
    return backbone if isinstance(backbone, nn.Module) else model


def remove_input_cast(model: nn.Module) -> None:
    """Remove the input-casting hook of :func:`cast_inputs` (also from deep copies)."""
    hooks = _input_module(model)._forward_pre_hooks
    for key in [key for key, hook in hooks.items() if getattr(hook, _HOOK_MARK, False)]:
        del hooks[key]


def cast_inputs(model: nn.Module, dtype: torch.dtype,
                memory_format: torch.memory_format = torch.contiguous_format) -> None:
    """Cast the floating tensor entering ``model``'s backbone to ``dtype``/``memory_format``.

    Installs one forward pre-hook on the backbone (or on ``model`` if it has none),
    replacing a previous one.
    """
    remove_input_cast(model)

    def hook(module, args):
        if args and torch.is_tensor(args[0]) and args[0].is_floating_point():
            x = args[0]
            if x.dim() == 4:
                x = x.to(dtype=dtype, memory_format=memory_format)
            else:
                x = x.to(dtype=dtype)
            return (x, *args[1:])
        return None

    setattr(hook, _HOOK_MARK, True)
    _input_module(model).register_forward_pre_hook(hook)


def _cast_parameters(model: nn.Module, dtype: Optional[torch.dtype],
                     memory_format: Optional[torch.memory_format]) -> None:
    """Cast ``model``, except mmseg's data preprocessor (its mean/std stay float32)."""
    preprocessor = getattr(model, 'data_preprocessor', None)
    if isinstance(preprocessor, nn.Module):
        targets = [child for child in model.children() if child is not preprocessor]
    else:
        targets = [model]
    for target in targets:
        if dtype is not None:
            target.to(dtype=dtype)
        if memory_format is not None:
            target.to(memory_format=memory_format)


def cpu_flags() -> Optional[frozenset]:
    """The instruction-set flags of this CPU (Linux ``/proc/cpuinfo``), None elsewhere."""
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('flags'):
                return frozenset(line.split(':', 1)[1].split())
    except OSError:
        pass
    return None


#: CPU flags of native bfloat16 arithmetic: AVX512-BF16, AMX-BF16, AVX-NE-CONVERT.
BFLOAT16_FLAGS = frozenset({'avx512_bf16', 'amx_bf16', 'avx_ne_convert'})


def cpu_has_fast_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX512-BF16, AMX-BF16 or
    AVX-NE-CONVERT). Without them bfloat16 convs are emulated: on an AVX2-only CPU a 3x3
    conv (256 channels, 64x128) took 42 s in bfloat16 against 0.15 s in float32
    (docs/quantization.md). oneDNN's own check also answers yes for plain AVX-512, where
    it emulates bfloat16; the CPU's flags decide where they can be read."""
    try:
        supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
    flags = cpu_flags()
    return supported if flags is None else supported and bool(flags & BFLOAT16_FLAGS)


def cpu_has_fast_float16() -> bool:
    """Whether oneDNN runs float16 natively on this CPU (AVX512-FP16 or AMX-FP16). Without
    it float16 convs are emulated: on an AVX2-only CPU a 3x3 conv (64 channels, 64x128)
    took 2.1 s in float16 against 8 ms in float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False


def half_precision_dtype(fp16: bool, bf16: bool) -> Optional[torch.dtype]:
    """The dtype that every tool's ``--fp16`` / ``--bf16`` pair asks for (``None``: float32).

    One place for the rule that the two switches exclude each other, so that the
    segmentation and classification tools and APIs refuse the pair in the same words.
    """
    if fp16 and bf16:
        raise InvalidArgumentError('--fp16 and --bf16 exclude each other; choose one')
    return torch.bfloat16 if bf16 else torch.float16 if fp16 else None


def prepare_for_inference(model: nn.Module, fuse: bool = True, fp16: bool = False,
                          channels_last: bool = False, fast_pooling: Optional[bool] = None,
                          half_dtype: torch.dtype = torch.float16) -> nn.Module:
    """Prepare ``model`` (an mmseg segmentor or a classifier) for inference, in place.

    Args:
        model: a built model, e.g. from :func:`repseg.mmseg.builder.build_segmentor`.
        fuse: re-parameterize every RepVGG block into one 3x3 conv
            (:func:`repseg.reparameterize`, in place). Models without RepVGG blocks
            (ResNet baselines) are unaffected.
        fp16: cast weights to ``half_dtype`` (float16 unless told otherwise); the data
            preprocessor stays float32 and its output is cast at the backbone.
        channels_last: store 4-d weights and inputs as NHWC (what tensor cores want).
        fast_pooling: swap PSP pyramid pooling for the matmul form
            (:func:`repseg.mmseg.fast_psp.use_fast_pyramid_pooling`); ``None`` means on
            exactly when ``fp16`` or ``channels_last`` is set, where PyTorch's
            ``adaptive_avg_pool2d`` is slow.
        half_dtype: the low-precision dtype used by ``fp16``; ``torch.bfloat16`` is an
            option for CPUs with fast bfloat16 (not what the GPU numbers use).

    Returns:
        ``model`` itself, in eval mode. Predictions come out as usual
        (``SegDataSample`` with ``pred_sem_seg``); ``seg_logits`` are in the model's dtype.
    """
    if half_dtype not in (torch.float16, torch.bfloat16):
        raise InvalidArgumentError(f'half_dtype must be torch.float16 or torch.bfloat16, got '
                                   f'{half_dtype}')
    if fuse:
        reparameterize(model, inplace=True)
    model.eval()
    if fast_pooling is None:
        fast_pooling = fp16 or channels_last
    if fast_pooling:
        use_fast_pyramid_pooling(model)
    dtype = half_dtype if fp16 else None
    memory_format = torch.channels_last if channels_last else None
    param = next(model.parameters(), None)
    if (dtype == torch.bfloat16 and param is not None and param.device.type == 'cpu'
            and not cpu_has_fast_bfloat16()):
        print_log('this CPU has no native bfloat16 (AVX512-BF16 or AMX): bfloat16 convs '
                  'run emulated, often 100x slower than float32', logger='current',
                  level=logging.WARNING)
    if dtype is not None or memory_format is not None:
        _cast_parameters(model, dtype, memory_format)
        param = next(model.parameters(), None)
        input_dtype = dtype or (param.dtype if param is not None else torch.float32)
        cast_inputs(model, input_dtype, memory_format or torch.contiguous_format)
    return model


def _as_chw_tensor(image: Image) -> torch.Tensor:
    """An ``H x W x 3`` array (as mmcv/cv2 load it) or a ``3 x H x W`` tensor, as CHW."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3:
            raise InvalidArgumentError(f'expected an H x W x C image array, got shape '
                                       f'{image.shape}')
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    if torch.is_tensor(image) and image.dim() == 3:
        return image
    raise TypeError('images must be H x W x C numpy arrays or C x H x W tensors, got '
                    f'{type(image).__name__} {getattr(image, "shape", "")}')


def labels_of(samples: Sequence) -> torch.Tensor:
    """The ``N x H x W`` label maps of mmseg's predictions (``SegDataSample.pred_sem_seg``),
    in their dtype and on their device: the one place repseg reads them."""
    return torch.stack([sample.pred_sem_seg.data[0] for sample in samples])


@torch.no_grad()
def predict_sample(model: nn.Module, image: Image):
    """mmseg's prediction (a ``SegDataSample``: ``seg_logits``, ``pred_sem_seg``) for one
    image, through the model's own data preprocessor (normalization, channel order) and
    ``model.predict`` in the model's test mode ('whole' or 'slide')."""
    data = model.data_preprocessor(dict(inputs=[_as_chw_tensor(image)]), False)
    return model.predict(data['inputs'], data.get('data_samples'))[0]


def predict_labels(model: nn.Module, image: Image) -> torch.Tensor:
    """The ``H x W`` int64 label map mmseg's predict path gives for one image
    (:func:`predict_sample`)."""
    return labels_of([predict_sample(model, image)])[0].long().cpu()


def prediction_agreement(model_a: nn.Module, model_b: nn.Module,
                         images: Union[Iterable[Image], torch.Tensor]) -> float:
    """Fraction of pixels (0..1) where two segmentors predict the same class.

    Args:
        model_a, model_b: mmseg segmentors (e.g. fp32 and
            ``prepare_for_inference(copy, fp16=True)``), each in eval mode.
        images: ``H x W x 3`` arrays as loaded by mmcv (BGR, 0-255), ``3 x H x W``
            tensors, or an ``N x 3 x H x W`` tensor; images may differ in size.

    Each image runs through each model's full predict path (:func:`predict_labels`);
    the result is pooled over all pixels of all images.
    """
    if torch.is_tensor(images) and images.dim() == 4:
        images = list(images)
    same = total = 0
    for image in images:
        labels_a, labels_b = predict_labels(model_a, image), predict_labels(model_b, image)
        if labels_a.shape != labels_b.shape:
            raise ValueError(f'the models predict different shapes: {tuple(labels_a.shape)} '
                             f'and {tuple(labels_b.shape)}')
        same += int((labels_a == labels_b).sum())
        total += labels_a.numel()
    if total == 0:
        raise InvalidArgumentError('prediction_agreement needs at least one image')
    return same / total
