"""The speed matrix behind ``tools/speed_matrix.py`` and ``tools/gpu_check.sh``.

* :mod:`.models`: segmentors built once per config with calibrated batch norms, copied
  per measured variant.
* call paths besides mmseg's ``predict`` come from :mod:`repseg.fast_inference`
  (``SegmentationPredictor`` and its speed options: CUDA graphs, cuDNN conv+ReLU, ...).
* :mod:`.training`: one training iteration (mmengine's ``train_step``, AMP on CUDA).
* :mod:`.matrix`: the plan (which model, which variant, which shape) and its run.
* :mod:`.targets`: the speed targets of the issue, met or not, from a matrix result.
* :mod:`.profiling`: ``torch.profiler`` per-op tables for the targets that were missed.
* :mod:`.report`: the matrix and the targets as Markdown tables.
"""
