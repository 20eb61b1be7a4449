"""Everything repseg measures about speed, for ``tools/benchmark.py`` and
``tools/gpu_check.sh``. Dependencies point one way, from the top of this list down:

* :mod:`.goals` and :mod:`.report`: the goals of issue 9 judged on a matrix result, and
  every Markdown table (benchmark records, call paths, matrix, goals).
* :mod:`.matrix` and :mod:`.profiling`: the benchmark matrix (which model, call path and
  shape) and ``torch.profiler`` per-op tables of the goals it missed.
* :mod:`.backends` (the CPU backends, interleaved: PyTorch fp32/bf16, ONNX Runtime
  fp32/INT8) and :mod:`.variants` (the fast-inference call paths side by side).
* :mod:`.benchmark`: segmentors, classifiers and the pooling op as timed calls
  (``Target``) and their records; :mod:`.training`: one training iteration.
* :mod:`.models`: the one place that builds what is timed (random weights, calibrated BN).
* :mod:`.record`: the one record type and its JSON; :mod:`.timing`: the one timing loop,
  synchronisation, warm-up, peak memory and environment.

The call paths themselves are :mod:`repseg.fast_inference`, a library this package uses
and that never imports it.
"""
