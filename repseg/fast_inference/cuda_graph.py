"""One call of a tensor function captured in a CUDA graph, replayed for every input.

A fused PSPNet-B2 in fp16 launches about 200 kernels per image; on an H200 the CPU spent
about as long issuing them (13 ms) as the GPU ran them (14 ms), so the GPU waits between
kernels. A CUDA graph records the launches once and replays them with one call.

The recipe (``torch.cuda.graphs``): warm the function up on a side stream (cuDNN
benchmarking, compilation and cached tensors happen there, never during capture),
capture one call on a static input buffer, then per call copy the input into the buffer,
replay, and clone the static output. Only inputs of the captured shape, dtype, layout and
device can be replayed.
"""
from __future__ import annotations

from typing import Callable

import torch

TensorFn = Callable[[torch.Tensor], torch.Tensor]


class CudaGraphCall:
    """``fn(x)`` by graph replay, for ``x`` shaped like ``example`` (see module doc).

    Raises whatever capture raises (e.g. a CPU-GPU synchronisation inside ``fn``);
    :func:`repseg.fast_inference` catches it and stays eager.
    """

    def __init__(self, fn: TensorFn, example: torch.Tensor, warmup: int = 2):
        if not example.is_cuda:
            raise ValueError(f'CUDA graphs need a CUDA input, got one on {example.device}')
        self.static_input = example.clone()
        current = torch.cuda.current_stream(example.device)
        side = torch.cuda.Stream(device=example.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn(self.static_input)
        current.wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_output = fn(self.static_input)

    def accepts(self, x: torch.Tensor) -> bool:
        """Whether ``x`` can be copied into the captured input buffer as it is."""
        static = self.static_input
        return (x.shape == static.shape and x.dtype == static.dtype
                and x.device == static.device and x.stride() == static.stride())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.accepts(x):
            raise ValueError(f'this CUDA graph was captured for {tuple(self.static_input.shape)} '
                             f'{self.static_input.dtype} on {self.static_input.device}, got '
                             f'{tuple(x.shape)} {x.dtype} on {x.device}')
        self.static_input.copy_(x)
        self.graph.replay()
        return self.static_output.clone()
