"""INT8 deployment of fused segmentors with ONNX Runtime (``tools/quantize.py``).

* :mod:`.data`: calibration and check images through the config's test pipeline;
* :mod:`.qdq`: ONNX Runtime's pre-processing and static QDQ quantization, and keeping
  chosen convs in float;
* :mod:`.accuracy`: mIoU and pixel agreement of an ONNX model against the fp32 one;
* :mod:`.gate`: the whole procedure with its accuracy gate and sensitivity step.
"""
from .accuracy import AccuracyCheck, Scores
from .gate import (GateFailure, GateSettings, QuantizeInputError, QuantReport,
                   quantize_segmentor, report_path)
from .qdq import DEFAULT_OP_TYPES, METHODS, QuantSettings, keep_in_float, quantized_convs

__all__ = ['AccuracyCheck', 'DEFAULT_OP_TYPES', 'GateFailure', 'GateSettings', 'METHODS', 'QuantReport',
           'QuantSettings', 'QuantizeInputError', 'Scores', 'keep_in_float',
           'quantize_segmentor', 'quantized_convs', 'report_path']
