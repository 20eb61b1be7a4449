"""Fast segmentation inference on fixed-size batches: optional speed paths behind one set
of options, with a report of which took effect and why not.

    model = build_segmentor_to_time('configs/pspnet_repvgg_b2.py', device='cuda')
    prepare_for_inference(model, fp16=True, channels_last=True)   # fuse, cast, fast pooling
    predictor = SegmentationPredictor(model, inputs, SpeedOptions.all())
    labels = predictor(inputs)              # N x H x W int64, mmseg's 'whole' predict path
    print(predictor.report.summary())       # requested X, got Y because Z

Options (:class:`SpeedOptions`), independent of each other, each falling back to the plain
path with the reason kept where it cannot run:

- ``conv_relu`` (:mod:`.conv_relu`): conv + bias + ReLU in one cuDNN call for every fused
  RepVGG block and conv-BN-ReLU ``ConvModule``; changes the model in place (so
  ``model.predict`` gains too); CUDA only, the plain path elsewhere.
- ``factored_psp`` (:mod:`.psp_head`): PSP's bottleneck conv over the feature map only,
  the pooled pyramid's share computed at bin resolution with two small matmuls (no
  upsampled bins, no concatenation); with ``conv_relu`` its conv, add, bias and ReLU are
  one cuDNN call.
- ``resize_argmax`` (:mod:`.resize_argmax`): the final resize and arg-max as one compiled
  kernel that never writes the full-size logits.
- ``cuda_graph`` (:mod:`.cuda_graph`): one call captured for the example's shape and
  replayed (CUDA only; other shapes run without the graph).
- ``compile_model``: ``torch.compile`` of the whole labels function (opt-in: compiling a
  big model takes minutes; it subsumes ``resize_argmax``).

:data:`VARIANTS` names the call paths (mmseg's predict, the predictor, each option,
all); :mod:`repseg.speed.variants` times them side by side for one config
(``tools/benchmark.py CONFIG --variants``). This package times nothing itself.
"""
from .predictor import (COMPILE_VARIANTS, OPTION_VARIANTS, VARIANTS, Outcome,
                        SegmentationPredictor, SpeedOptions, SpeedReport)

__all__ = ['COMPILE_VARIANTS', 'OPTION_VARIANTS', 'Outcome', 'SegmentationPredictor',
           'SpeedOptions', 'SpeedReport', 'VARIANTS']
