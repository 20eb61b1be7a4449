"""Run an exported ``.onnx`` segmentor with ONNX Runtime wherever repseg runs PyTorch ones.

``tools/test.py CONFIG MODEL.onnx`` and ``tools/infer.py CONFIG MODEL.onnx ...`` take an
``.onnx`` file (fp32 from ``tools/export_onnx.py`` or INT8 from ``tools/quantize.py``) in
place of the checkpoint. The config still supplies everything around the network: the
test pipeline, the dataset, the metric, the number of classes, the test mode ('whole' or
'slide') and the palette. The graph replaces the network itself, as an mmseg segmentor
(:class:`OnnxRuntimeSegmentor`), so mmseg's predict path, the Runner, ``IoUMetric``, the
label-id and visualisation hooks and ``repseg.segment`` work unchanged.

What the graph is given: the batch as the test pipeline packs it, float32 pixel values
0-255 in the channel order mmcv loads (BGR). Normalisation and the channel swap are
inside the exported graph, so this model's data preprocessor only stacks the batch. What
comes out is handled per output:

* ``logits`` (N x classes x H x W, at input size): used as mmseg's ``seg_logits``, so the
  resize to the original size, the slide-window average and the arg-max are mmseg's own.
* ``labels`` (N x H x W): turned into one-hot scores, so the arg-max gives the labels back
  exactly (and sliding windows vote).

A graph with a fixed input size (exported without ``--dynamic``) receives each batch
resized (bilinear) to that size; its output is resized back, as mmseg does for a test
pipeline that resizes. A graph with a fixed batch of 1 is run image by image. The session
runs on the CPU (``CPUExecutionProvider``), whatever the device of the batch.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.config import Config, ConfigDict
from mmseg.models.segmentors import BaseSegmentor, EncoderDecoder
from mmseg.registry import MODELS

from .errors import UserError

ONNX_SUFFIX = '.onnx'
PathLike = Union[str, os.PathLike]


class OnnxModelError(UserError, ValueError):
    """An ``.onnx`` file or a request that an ONNX Runtime model cannot serve."""


def is_onnx_file(path: Optional[PathLike]) -> bool:
    """Whether ``path`` names an ONNX model (by its suffix)."""
    return path is not None and Path(str(path)).suffix.lower() == ONNX_SUFFIX


def _fixed(dim) -> Optional[int]:
    return dim if isinstance(dim, int) and dim > 0 else None


class OnnxGraph:
    """An ONNX Runtime CPU session and what repseg needs to know about its graph: the one
    wrapper that export checks, the ONNX backend, the quantization gate and the speed
    code run graphs through.

    Args:
        model: a path to an ``.onnx`` file or the serialized model (bytes).
        threads: ONNX Runtime intra-op threads (None: its default, one per core).
    """

    def __init__(self, model: Union[PathLike, bytes], threads: Optional[int] = None):
        import onnxruntime as ort
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidProtobuf

        if not isinstance(model, bytes) and not Path(model).is_file():
            raise OnnxModelError(f'ONNX model not found: {model}')
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, options,
                                                providers=['CPUExecutionProvider'])
        except InvalidProtobuf as error:
            raise OnnxModelError(
                f'{self._name(model)} is not an ONNX model (ONNX Runtime cannot parse it: '
                f'{str(error).strip()[:200]}); give a .onnx file written by '
                'tools/export_onnx.py or tools/quantize.py') from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 4:
            raise OnnxModelError(
                f'{self._name(model)}: expected one N x 3 x H x W input and one output (a '
                'segmentor exported by tools/export_onnx.py or tools/quantize.py), found '
                f'inputs {[(i.name, i.shape) for i in inputs]} and outputs '
                f'{[(o.name, o.shape) for o in outputs]}')
        self.input_name = inputs[0].name
        self.labels = len(outputs[0].shape) == 3
        batch, _, height, width = inputs[0].shape
        self.fixed_batch = _fixed(batch)
        size = (_fixed(height), _fixed(width))
        self.fixed_size = size if None not in size else None

    @staticmethod
    def _name(model) -> str:
        return 'the ONNX model' if isinstance(model, bytes) else str(model)

    def run(self, images: np.ndarray) -> np.ndarray:
        """The raw output for an ``N x 3 x H x W`` float32 batch of the graph's size."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        if self.fixed_batch is not None and self.fixed_batch != images.shape[0]:
            if self.fixed_batch != 1:
                raise OnnxModelError(f'the ONNX model takes batches of {self.fixed_batch} '
                                     f'images, got {images.shape[0]}')
            return np.concatenate([self.run(image[None]) for image in images])
        return self.session.run(None, {self.input_name: images})[0]

    def scores(self, images: torch.Tensor, num_classes: int,
               align_corners: bool = False) -> torch.Tensor:
        """Per-class scores ``N x classes x H x W`` (float32, on the CPU) for a batch of
        pixel values (any size: a fixed-size graph gets it resized and back)."""
        height, width = images.shape[-2:]
        images = images.detach().float().cpu()
        if self.fixed_size is not None and (height, width) != self.fixed_size:
            images = F.interpolate(images, size=self.fixed_size, mode='bilinear',
                                   align_corners=False)
        output = torch.from_numpy(self.run(images.numpy()))
        if self.labels:
            output = F.one_hot(output.long(), num_classes).permute(0, 3, 1, 2).float()
        if tuple(output.shape[-2:]) != (height, width):
            output = F.interpolate(output, size=(height, width), mode='bilinear',
                                   align_corners=align_corners)
        return output

    def predict_labels(self, images: np.ndarray) -> np.ndarray:
        """``N x H x W`` labels for an ``N x 3 x H x W`` batch of the graph's own size."""
        output = self.run(images)
        return output.astype(np.int64) if self.labels else output.argmax(axis=1)


@MODELS.register_module()
class OnnxRuntimeSegmentor(BaseSegmentor):
    """An mmseg segmentor whose network is an ONNX Runtime session.

    Args:
        onnx_file: the ``.onnx`` file (or its serialized bytes).
        num_classes: classes of the decode head (one-hot size for label outputs).
        align_corners: of the decode head (used when resizing scores).
        test_cfg: ``dict(mode='whole')`` or ``dict(mode='slide', crop_size=..., stride=...)``.
        threads: ONNX Runtime intra-op threads (None: its default).
        data_preprocessor: stacks the batch; must not normalize (the graph does).
    """

    # mmseg's inference path, shared with every EncoderDecoder: slide or whole, then the
    # resize to the original size and the arg-max in postprocess_result.
    predict = EncoderDecoder.predict
    inference = EncoderDecoder.inference
    slide_inference = EncoderDecoder.slide_inference
    whole_inference = EncoderDecoder.whole_inference

    def __init__(self, onnx_file: Union[PathLike, bytes], num_classes: int,
                 align_corners: bool = False, test_cfg: Optional[dict] = None,
                 threads: Optional[int] = None, data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(data_preprocessor=data_preprocessor or
                         dict(type='SegDataPreProcessor'), init_cfg=init_cfg)
        self.graph = OnnxGraph(onnx_file, threads)
        self.num_classes = self.out_channels = int(num_classes)
        self.align_corners = align_corners
        self.test_cfg = ConfigDict(test_cfg or dict(mode='whole'))

    def encode_decode(self, inputs: torch.Tensor, batch_img_metas: list) -> torch.Tensor:
        scores = self.graph.scores(inputs, self.num_classes, self.align_corners)
        return scores.to(inputs.device)

    def extract_feat(self, inputs: torch.Tensor):
        raise NotImplementedError('an ONNX Runtime segmentor exposes no features')

    def _forward(self, inputs: torch.Tensor, data_samples=None) -> torch.Tensor:
        return self.encode_decode(inputs, None)

    def loss(self, inputs, data_samples):
        raise OnnxModelError('an ONNX model cannot be trained; train the PyTorch model')


def segmentor_arguments(model_cfg: Union[dict, ConfigDict]) -> dict:
    """What an :class:`OnnxRuntimeSegmentor` takes from the segmentor config it stands in
    for: the classes, ``align_corners`` and the test mode."""
    head = model_cfg.get('decode_head') or {}
    if 'num_classes' not in head:
        raise OnnxModelError('the config has no model.decode_head.num_classes; an ONNX '
                             'model needs it to know the classes')
    return dict(num_classes=head['num_classes'],
                align_corners=bool(head.get('align_corners', False)),
                test_cfg=model_cfg.get('test_cfg') or dict(mode='whole'))


def onnx_model_config(model_cfg: Union[dict, ConfigDict], onnx_file: PathLike,
                      threads: Optional[int] = None) -> ConfigDict:
    """The config of an :class:`OnnxRuntimeSegmentor` standing in for ``model_cfg``'s
    segmentor (see :func:`segmentor_arguments`)."""
    if not Path(onnx_file).is_file():
        raise OnnxModelError(f'ONNX model not found: {onnx_file}')
    return ConfigDict(type=OnnxRuntimeSegmentor.__name__, onnx_file=str(onnx_file),
                      threads=threads, data_preprocessor=dict(type='SegDataPreProcessor'),
                      **segmentor_arguments(model_cfg))


def use_onnx_model(cfg: Config, onnx_file: PathLike, threads: Optional[int] = None) -> None:
    """Make ``cfg`` (as prepared for ``tools/test.py``) build an ONNX Runtime segmentor."""
    cfg.model = onnx_model_config(cfg.model, onnx_file, threads)
    imports = cfg.get('custom_imports') or dict(imports=[], allow_failed_imports=False)
    imports['imports'] = list(dict.fromkeys([*imports.get('imports', []), __name__]))
    cfg.custom_imports = imports


def load_onnx_segmentor(cfg: Config, onnx_file: PathLike,
                        threads: Optional[int] = None) -> OnnxRuntimeSegmentor:
    """An :class:`OnnxRuntimeSegmentor` for ``cfg`` with ``model.cfg`` and
    ``model.dataset_meta`` set, as :func:`repseg.mmseg.builder.build_segmentor` does."""
    from .mmseg.builder import _default_dataset_meta

    model = MODELS.build(onnx_model_config(cfg.model, onnx_file, threads))
    model.cfg = cfg
    model.dataset_meta = _default_dataset_meta()
    return model.eval()


def refuse_precision_flags(onnx_file: PathLike, fp16: bool, bf16: bool) -> None:
    """Half-precision switches apply to PyTorch models only: say so instead of ignoring."""
    flags = [flag for flag, on in (('--fp16', fp16), ('--bf16', bf16)) if on]
    if flags:
        raise OnnxModelError(
            f"{' and '.join(flags)} cast{'s' if len(flags) == 1 else ''} a PyTorch model; "
            f'{onnx_file} runs in ONNX Runtime with the precision it was exported or '
            'quantized in. Drop the flag, or give a .pth checkpoint.')
