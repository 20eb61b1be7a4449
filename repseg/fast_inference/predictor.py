"""The predictor: mmseg's 'whole' predict path as one tensor function, with speed options.

A predictor computes what ``tools/benchmark.py`` times: the segmentor's logits
(``model(x, mode='tensor')``), bilinear resize to the input size (the decode head's
``align_corners``) and arg-max over classes, on normalized ``N x 3 x H x W`` float32 inputs.
Without options its labels equal ``model.predict(inputs)[i].pred_sem_seg``; with options,
up to ties and the rounding each option documents. No ``SegDataSample`` is built and the
full-size logits are not returned.

Building a predictor runs the example through it once (more for a CUDA graph): that is
where cuDNN plans are chosen, kernels compiled and failures caught, so the report is true
before the first timed call.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Callable, Optional

import torch
import torch.nn as nn

from .fallback import error_summary
from .conv_relu import conv_relu_modules, cudnn_conv_relu_unavailable, use_conv_relu
from .cuda_graph import CudaGraphCall
from .psp_head import use_factored_psp_head
from .resize_argmax import FusedResizeArgmax, resize_argmax


@dataclass(frozen=True)
class SpeedOptions:
    """Which speed paths to take (see the module doc); all off by default."""

    conv_relu: bool = False
    factored_psp: bool = False
    resize_argmax: bool = False
    cuda_graph: bool = False
    compile_model: bool = False

    @classmethod
    def all(cls, compile_model: bool = False) -> 'SpeedOptions':
        """Every option, ``compile_model`` only if asked (it takes minutes)."""
        return cls(conv_relu=True, factored_psp=True, resize_argmax=True, cuda_graph=True,
                   compile_model=compile_model)

    def names(self) -> list[str]:
        """The names of the options switched on, in declaration order."""
        return [f.name for f in fields(self) if getattr(self, f.name)]


#: The call paths by name, in timing order: mmseg's ``model.predict`` (None), the predictor
#: without options, each option alone, and all four (``variant`` means a call path).
VARIANTS = {
    'mmseg predict': None,
    'predictor': SpeedOptions(),
    '+conv_relu': SpeedOptions(conv_relu=True),
    '+factored_psp': SpeedOptions(factored_psp=True),
    '+resize_argmax': SpeedOptions(resize_argmax=True),
    '+cuda_graph': SpeedOptions(cuda_graph=True),
    'all': SpeedOptions.all(),
}
#: The call paths with ``torch.compile`` (opt-in: minutes of compiling for a big model).
COMPILE_VARIANTS = {
    '+compile_model': SpeedOptions(compile_model=True),
    'all + compile_model': SpeedOptions.all(compile_model=True),
}
#: Every call path that goes through the predictor (all but mmseg's predict).
OPTION_VARIANTS = tuple(name for name, options in {**VARIANTS, **COMPILE_VARIANTS}.items()
                        if options is not None)


@dataclass
class Outcome:
    """What became of one requested option: ``applied``, and what it did or why not."""

    applied: bool
    detail: str


@dataclass
class SpeedReport:
    """The outcome of every requested option, by name (:class:`SpeedOptions` fields)."""

    outcomes: dict

    def applied(self, name: str) -> bool:
        outcome = self.outcomes.get(name)
        return outcome is not None and outcome.applied

    def summary(self) -> str:
        """One line per requested option, e.g. ``cuda_graph: not applied (inputs on cpu)``."""
        if not self.outcomes:
            return 'no speed options requested'
        return '\n'.join(f"{name}: {'applied' if o.applied else 'not applied'} ({o.detail})"
                         for name, o in self.outcomes.items())

    def to_dict(self) -> dict:
        return {name: asdict(outcome) for name, outcome in self.outcomes.items()}


def _conv_relu_outcome(model: nn.Module, device: torch.device, change) -> Outcome:
    """Read the converted modules after the warm-up call: which run the cuDNN op."""
    counts = change.describe()
    modules = conv_relu_modules(model)
    if not modules:
        return Outcome(False, 'no fused RepVGG block or conv-BN-ReLU module in the model')
    if device.type != 'cuda':
        return Outcome(False, f'converted {counts}; they run conv + ReLU: inputs on '
                              f'{device}, the fused op is CUDA only')
    unavailable = cudnn_conv_relu_unavailable()
    if unavailable is not None:
        return Outcome(False, f'converted {counts}; they run conv + ReLU: {unavailable}')
    failed = [m for m in modules if m.cudnn_error is not None]
    fused = [m for m in modules if m.cudnn_verified]
    if failed:
        detail = (f'{len(fused)} of {len(modules)} modules fused by cuDNN; '
                  f'{len(failed)} fell back to conv + ReLU: {failed[0].cudnn_error}')
        return Outcome(bool(fused), detail)
    return Outcome(True, f'converted {counts}; all run cudnn_convolution_relu')


def _factored_psp_outcome(heads: dict) -> Outcome:
    if not heads:
        return Outcome(False, 'no PSPHead in the model')
    refused = {name: why for name, why in heads.items() if why is not None}
    if refused:
        name, why = next(iter(refused.items()))
        return Outcome(len(refused) < len(heads), f'{name} left as it is: {why}')
    return Outcome(True, 'bottleneck over the feature map only, pyramid term as matmuls')


class SegmentationPredictor:
    """``labels = predictor(inputs)`` for a prepared mmseg segmentor (see the module doc).

    Args:
        model: an mmseg ``EncoderDecoder`` in eval mode, on the example's device, e.g.
            prepared by :func:`repseg.inference.prepare_for_inference`. ``conv_relu``
            changes it in place.
        example: a normalized ``N x 3 x H x W`` float32 batch of the shape to serve; the
            CUDA graph is captured for exactly this shape.
        options: :class:`SpeedOptions`.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor,
                 options: SpeedOptions = SpeedOptions()):
        if not hasattr(model, 'decode_head'):
            raise TypeError(f'SegmentationPredictor needs an mmseg segmentor with a decode '
                            f'head, got {type(model).__name__}')
        self.model, self.options = model, options
        self.align_corners = bool(model.decode_head.align_corners)
        self._graph: Optional[CudaGraphCall] = None
        use_cudnn = options.conv_relu and example.is_cuda and \
            cudnn_conv_relu_unavailable() is None
        change = use_conv_relu(model, use_cudnn) if options.conv_relu else None
        heads = use_factored_psp_head(model, use_cudnn) if options.factored_psp else None
        self._fused_resize: Optional[FusedResizeArgmax] = None
        if options.resize_argmax and not options.compile_model:
            self._fused_resize = FusedResizeArgmax()
        self._labels_fn: Callable[[torch.Tensor], torch.Tensor] = self._labels
        with torch.inference_mode():  # cuDNN plans, kernels compiled, first-call fallbacks
            self._labels(example)

        outcomes = {}
        if change is not None:
            outcomes['conv_relu'] = _conv_relu_outcome(model, example.device, change)
        if heads is not None:
            outcomes['factored_psp'] = _factored_psp_outcome(heads)
        if options.compile_model:
            outcomes['compile_model'] = self._compile(example)
        if options.resize_argmax:
            outcomes['resize_argmax'] = self._resize_outcome(outcomes.get('compile_model'))
        if options.cuda_graph:
            outcomes['cuda_graph'] = self._capture(example)
        self.report = SpeedReport({name: outcomes[name] for name in options.names()})

    def _resize_outcome(self, compiled_model: Optional[Outcome]) -> Outcome:
        if compiled_model is not None:
            return Outcome(compiled_model.applied, 'part of compile_model' if
                           compiled_model.applied else 'eager resize + arg-max, as the model')
        error = self._fused_resize.error
        return Outcome(error is None, 'one compiled kernel' if error is None
                       else f'eager resize + arg-max: {error}')

    def _labels(self, inputs: torch.Tensor) -> torch.Tensor:
        logits = self.model(inputs, mode='tensor')
        resize = self._fused_resize or resize_argmax
        return resize(logits, inputs.shape[-2:], self.align_corners)

    def _compile(self, example: torch.Tensor) -> Outcome:
        compiled = torch.compile(self._labels, dynamic=False)
        try:
            with torch.inference_mode():
                compiled(example)
        except Exception as error:  # noqa: BLE001 - any compiler failure: report, stay eager
            return Outcome(False, f'eager model: {error_summary(error)}')
        self._labels_fn = compiled
        return Outcome(True, 'torch.compile of the whole labels function')

    def _capture(self, example: torch.Tensor) -> Outcome:
        if not example.is_cuda:
            return Outcome(False, f'inputs on {example.device}, CUDA graphs need CUDA')
        try:
            with torch.inference_mode():
                self._graph = CudaGraphCall(self._labels_fn, example)
        except Exception as error:  # noqa: BLE001 - capture failed: report, stay eager
            torch.cuda.synchronize(example.device)
            self._graph = None
            return Outcome(False, f'capture failed, eager calls: {error_summary(error)}')
        shape = 'x'.join(str(s) for s in example.shape)
        return Outcome(True, f'captured for {shape} {example.dtype}; other shapes run eager')

    @torch.inference_mode()
    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """``N x H x W`` int64 labels of a normalized ``N x 3 x H x W`` batch."""
        if self._graph is not None and self._graph.accepts(inputs):
            return self._graph(inputs)
        return self._labels_fn(inputs)
