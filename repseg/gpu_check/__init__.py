"""One command that proves repseg on a GPU machine: ``tools/gpu_check.sh OUT_DIR``.

Steps (each a subprocess running a repseg tool, with its own time limit; a failed or
timed-out step is recorded and the next one still runs):

1. ``environment``: versions, the GPU, and which packages import.
2. ``matrix``: the benchmark matrix (:mod:`repseg.speed.matrix`).
3. ``profile``: ``torch.profiler`` tables of the models of every missed target.
4. ``toy-city`` ... ``export``: the toy city at 512x1024; training on one GPU through
   ``tools/dist_train.sh CONFIG 1`` with SyncBN and ``--amp``; ``--resume``; test in fp32
   and ``--fp16``; fuse (``tools/deploy.py``); segment (``tools/infer.py``); ONNX export.
5. ``pytest-cuda``: ``pytest -m cuda`` (last: a budget cut loses the fewest results).
6. ``compile`` (with ``--compile``): ``torch.compile`` of the fp16 predictor with every
   speed option (:mod:`repseg.fast_inference`), B2 and R-101-D8.

``OUT_DIR`` gets four files, rewritten after every step (and every few seconds during
the matrix), so a run stopped from outside still leaves a summary: ``summary.md`` (targets
met or not, all tables), ``results.json`` (everything), ``profile.txt`` and
``logs.tar.gz`` (every step's log, the matrix JSON, pytest's report). Work files
(data, checkpoints) go to ``--work-dir``. ``--smoke`` runs the same steps at tiny sizes on
the CPU (no AMP, SyncBN becomes BN, no CUDA graphs: the summary says so).
"""
from .layout import SMOKE_NOTE, StepResult
from .steps import GpuCheck

__all__ = ['GpuCheck', 'SMOKE_NOTE', 'StepResult']
