"""Static INT8 quantization of an exported segmentor with ONNX Runtime (QDQ format).

Steps, each ONNX Runtime's own tool:

1. :func:`preprocess`: ``quant_pre_process`` (shape inference and ONNX Runtime's basic
   graph optimisations). It is what makes the INT8 graph fast: without it every
   QuantizeLinear/DequantizeLinear pair stayed a separate op around a float conv, and the
   INT8 model ran slower than fp32 (0.86x on a fused RepVGG-A0 body).
2. :func:`quantize`: activation ranges from real images (:func:`calibrate`: min-max,
   percentile or entropy, ONNX Runtime's calibrators), then ``quantize_static``: weights
   int8 symmetric per output channel (or per tensor), activations uint8, QDQ format.
   ONNX Runtime then fuses each ``DequantizeLinear -> Conv -> QuantizeLinear`` into an
   integer convolution.
3. :func:`keep_in_float`: a layer kept in float reads its original float weight and bias
   instead of their DequantizeLinear, so ONNX Runtime runs it as a float conv between
   int8 neighbours: the graph ``nodes_to_exclude`` gives, built in milliseconds from the
   quantized model instead of a full re-quantization (the per-channel parameters alone
   take seconds of Python loops per try).

Why per channel: a fused RepVGG kernel sums a 3x3, a 1x1 and an identity branch, each
scaled by its own BN, so output channels of one kernel can differ in range by orders of
magnitude; one scale per tensor then rounds the small channels to zero.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence, Union

import onnx
from onnx import ModelProto

PathLike = Union[str, os.PathLike]

#: ``--method`` names and ONNX Runtime's calibration methods.
METHODS = ('minmax', 'percentile', 'entropy')
#: Ops quantized by default: every conv (the whole backbone and head) and the ReLUs after
#: them. Naming Relu matters: ONNX Runtime then quantizes each conv output with its ReLU's
#: range and drops the ReLU (the uint8 range starts at 0); with 'Conv' alone it quantizes
#: the conv output with its pre-ReLU range (half the levels spent on negatives), then the
#: ReLU output again, a second rounding and an extra requantization per layer. The pyramid
#: pooling matmuls, resizes and the concat stay float: they are cheap, and quantizing the
#: final resize would round the logits to 256 levels and create arg-max ties.
DEFAULT_OP_TYPES = ('Conv', 'Relu')
FORMATS = ('qdq', 'qoperator')


@dataclass(frozen=True)
class QuantSettings:
    """How to quantize (defaults: QDQ, per-channel int8 weights, uint8 activations,
    min-max calibration, convs and their ReLUs)."""

    method: str = 'minmax'
    per_channel: bool = True
    reduce_range: bool = False
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES
    quant_format: str = 'qdq'

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown calibration method {self.method!r}; choose from "
                             f"{', '.join(METHODS)}")
        if self.quant_format not in FORMATS:
            raise ValueError(f"unknown format {self.quant_format!r}; choose from "
                             f"{', '.join(FORMATS)}")

    def describe(self) -> str:
        weights = 'per-channel' if self.per_channel else 'per-tensor'
        extra = ', 7-bit weights' if self.reduce_range else ''
        return (f"{self.quant_format.upper()}, {weights} int8 weights{extra}, {self.method} "
                f"calibration, ops {'/'.join(self.op_types)}")

    def to_dict(self) -> dict:
        return {**asdict(self), 'op_types': list(self.op_types)}


@contextlib.contextmanager
def _quiet():
    """ONNX Runtime's quantization tools print and log progress; keep the tool's output
    readable (errors still raise)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def preprocess(src: PathLike, dst: PathLike) -> None:
    """ONNX Runtime's quantization pre-processing of ``src`` into ``dst``: its graph
    optimisation and ONNX shape inference. Its symbolic shape inference (meant for
    transformers' dynamic sequence axes) is skipped: on a dynamic-size segmentor it took
    most of the quantization time and changed nothing in the quantized graph."""
    from onnxruntime.quantization import quant_pre_process

    with _quiet():
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


def _calibration_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return dict(minmax=CalibrationMethod.MinMax, percentile=CalibrationMethod.Percentile,
                entropy=CalibrationMethod.Entropy)[name]


#: ONNX Runtime calibrator options per method. Ranges stay asymmetric (ONNX Runtime's
#: percentile default is symmetric: half the uint8 levels wasted on non-negative ReLU
#: outputs). Entropy needs more histogram bins than quantized bins: ``quantize_static``
#: fixes both at 128, which leaves one candidate threshold, the min-max range.
CALIBRATOR_OPTIONS = dict(
    minmax={},
    percentile=dict(symmetric=False, num_bins=2048, percentile=99.999),
    entropy=dict(symmetric=False, num_bins=512, num_quantized_bins=128))


def calibrate(src: PathLike, reader, settings: QuantSettings, folder: PathLike):
    """Activation ranges of the pre-processed model ``src`` on the reader's images
    (ONNX Runtime's ``TensorsData``), with :data:`CALIBRATOR_OPTIONS`."""
    from onnxruntime.quantization import create_calibrator

    with _quiet():
        calibrator = create_calibrator(
            Path(src), list(settings.op_types),
            augmented_model_path=str(Path(folder) / 'augmented.onnx'),
            calibrate_method=_calibration_method(settings.method),
            extra_options=CALIBRATOR_OPTIONS[settings.method])
        calibrator.collect_data(reader)
        return calibrator.compute_data()


def _quantize_static_takes_ranges() -> bool:
    from onnxruntime.quantization import quantize_static

    return 'calibration_cache_path' in inspect.signature(quantize_static).parameters


def quantize(src: PathLike, dst: PathLike, reader, settings: QuantSettings) -> None:
    """Calibrate and quantize the pre-processed fp32 model ``src`` into ``dst`` (see the
    module docstring); ``reader`` is an ONNX Runtime ``CalibrationDataReader``.

    The ranges come from :func:`calibrate` and reach ``quantize_static`` through its
    calibration cache (onnxruntime >= 1.32). Older versions calibrate inside
    ``quantize_static`` with its own options (there, entropy equals min-max).
    """
    from onnxruntime.quantization import (QuantFormat, QuantType, quantize_static,
                                          save_tensors_data)

    arguments = dict(
        quant_format=dict(qdq=QuantFormat.QDQ, qoperator=QuantFormat.QOperator)[
            settings.quant_format],
        op_types_to_quantize=list(settings.op_types), per_channel=settings.per_channel,
        reduce_range=settings.reduce_range, activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8, calibrate_method=_calibration_method(settings.method),
        extra_options=dict(CalibTensorRangeSymmetric=False))
    if not _quantize_static_takes_ranges():
        logging.getLogger(__name__).warning(
            'this onnxruntime calibrates inside quantize_static: %s calibration runs with '
            'its fixed options', settings.method)
        with _quiet():
            quantize_static(str(src), str(dst), reader, **arguments)
        return
    with tempfile.TemporaryDirectory(prefix='repseg_calib_') as folder:
        ranges = calibrate(src, reader, settings, folder)
        cache = Path(folder) / 'ranges.json'
        save_tensors_data(ranges, cache)
        with _quiet():
            quantize_static(str(src), str(dst), None, calibration_cache_path=str(cache),
                            **arguments)


def _producers(model: ModelProto) -> dict:
    return {output: node for node in model.graph.node for output in node.output}


def quantized_convs(model: ModelProto) -> list[str]:
    """Names of the Conv nodes of a QDQ model whose weight is dequantized int8, in graph
    order: the layers that can be kept in float."""
    producers = _producers(model)
    names = []
    for node in model.graph.node:
        if node.op_type == 'Conv' and len(node.input) > 1:
            producer = producers.get(node.input[1])
            if producer is not None and producer.op_type == 'DequantizeLinear':
                names.append(node.name)
    return names


def _remove_dead_nodes(model: ModelProto) -> None:
    """Drop nodes whose outputs nobody reads, then initializers nobody reads."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        dead = [n for n in graph.node if n.output and not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input} | outputs
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def _zero_point_is_zero(model: ModelProto, dq_node) -> bool:
    """Whether a DequantizeLinear maps the lowest level to 0: its tensor is non-negative
    (a ReLU output; ONNX Runtime drops such ReLUs and lets the uint8 range clamp)."""
    from onnx import numpy_helper

    if len(dq_node.input) < 3:
        return True  # the default zero point is 0
    for init in model.graph.initializer:
        if init.name == dq_node.input[2]:
            return not numpy_helper.to_array(init).any()
    return False


def _float_input(model: ModelProto, node, producers: dict, counter: list) -> None:
    """Feed ``node`` a float tensor that ONNX Runtime will not re-quantize.

    ONNX Runtime's WeightBiasQuantization optimizer quantizes the float weight of any
    Conv that reads a DequantizeLinear and feeds a QuantizeLinear (per tensor, symmetric:
    exactly what per-channel quantization avoids), so a float conv must not read a
    DequantizeLinear directly. A non-negative input gets a ReLU in between (a no-op on
    it, as ``nodes_to_exclude`` does); a signed one is read before its QuantizeLinear.
    """
    dequantize = producers.get(node.input[0])
    if dequantize is None or dequantize.op_type != 'DequantizeLinear':
        return
    if _zero_point_is_zero(model, dequantize):
        counter[0] += 1
        relu = onnx.helper.make_node('Relu', [node.input[0]], [f'{node.name}_float_input'],
                                     name=f'{node.name}_float_input_{counter[0]}')
        model.graph.node.insert(list(model.graph.node).index(node), relu)
        node.input[0] = relu.output[0]
        return
    quantize = producers.get(dequantize.input[0])
    if quantize is not None and quantize.op_type == 'QuantizeLinear':
        node.input[0] = quantize.input[0]


def keep_in_float(int8: ModelProto, fp32: ModelProto, names: Iterable[str]) -> ModelProto:
    """A copy of the QDQ model ``int8`` where the Conv nodes ``names`` compute in float:
    the float weight and bias of the pre-processed fp32 model ``fp32`` (the model that
    was quantized) replace their DequantizeLinear, and their input is float (see
    :func:`_float_input`). Their output is quantized as before, for its int8 consumers."""
    names = set(names)
    model = ModelProto()
    model.CopyFrom(int8)
    fp32_inputs = {n.name: list(n.input) for n in fp32.graph.node if n.op_type == 'Conv'}
    fp32_weights = {i.name: i for i in fp32.graph.initializer}
    existing = {i.name for i in model.graph.initializer}
    producers = _producers(model)
    counter = [0]
    for node in [n for n in model.graph.node if n.name in names]:
        if node.name not in fp32_inputs:
            raise KeyError(f'Conv {node.name!r} is not in the fp32 model')
        for slot in range(1, min(len(node.input), len(fp32_inputs[node.name]))):
            source = fp32_weights.get(fp32_inputs[node.name][slot])
            if source is None:
                continue
            name = f'{source.name}_float'
            if name not in existing:
                copy = model.graph.initializer.add()
                copy.CopyFrom(source)
                copy.name = name
                existing.add(name)
            node.input[slot] = name
        _float_input(model, node, producers, counter)
        names.discard(node.name)
    if names:
        raise KeyError(f"no such Conv in the INT8 model: {', '.join(sorted(names))}")
    _remove_dead_nodes(model)
    return model


def layer_names(fp32: ModelProto, nodes: Sequence[str]) -> dict[str, str]:
    """Readable names of Conv nodes: the PyTorch module of their weight
    (``backbone.stages.2.5.fused``), else the node name."""
    weight_of = {n.name: n.input[1] for n in fp32.graph.node
                 if n.op_type == 'Conv' and len(n.input) > 1}
    names = {}
    for node in nodes:
        weight = weight_of.get(node, '')
        if weight.endswith('.weight') and not weight.startswith('onnx::'):
            names[node] = weight[:-len('.weight')].removeprefix('segmentor.')
        else:
            names[node] = node
    return names


def load(path: PathLike) -> ModelProto:
    return onnx.load(str(path))
