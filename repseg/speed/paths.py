"""Call paths of a prepared segmentor besides mmseg's ``predict``, for the speed matrix.

mmseg's ``predict`` wraps every image in a ``SegDataSample``; a deployment needs only the
tensor work: forward, resize the logits to the image, arg-max. That is the tail of
:class:`repseg.export.SegmentorForExport` with ``labels=True`` (what ONNX exports), fed the
normalized batch as ``predict`` is (so both paths time the same work). The same function
is timed eagerly, replayed from a CUDA graph (fixed shapes: the launch overhead of some
150 kernels per image disappears) and compiled with ``torch.compile``. With a model
prepared in float16 channels-last, the resize and arg-max run in float16 on the
channels-last logits.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from ..export import SegmentorForExport

TensorFunction = Callable[[torch.Tensor], torch.Tensor]


def label_function(model: nn.Module) -> TensorFunction:
    """``normalized batch (N x 3 x H x W, float32) -> labels (N x H x W, uint8)`` for a
    prepared segmentor, without gradients."""
    wrapper = SegmentorForExport(model, labels=True).eval()
    # The input is normalized already (as for predict). The channel swap would also index
    # with a host-side list, which a CUDA graph cannot capture.
    wrapper.swap_channels = wrapper.normalize = False

    def labels(image: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return wrapper(image)

    return labels


def cuda_graph_call(fn: TensorFunction, example: torch.Tensor,
                    warmup: int = 3) -> Callable[[], torch.Tensor]:
    """Capture ``fn(example)`` in a CUDA graph; return a call that replays it.

    The warm-up runs on a side stream, as graph capture requires (cuDNN picks its
    algorithms, lazy caches fill). Each call copies ``example`` into the captured input
    first, as a pipeline feeding new images would, then replays; the returned tensor is
    the graph's static output, overwritten by the next call.
    """
    static_input = example.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn(static_input)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_output = fn(static_input)

    def replay() -> torch.Tensor:
        static_input.copy_(example)
        graph.replay()
        return static_output

    return replay


def compiled_function(fn: TensorFunction, mode: str = 'default') -> TensorFunction:
    """``torch.compile(fn, mode=mode)``; compilation happens on the first call."""
    return torch.compile(fn, mode=mode, dynamic=False)
