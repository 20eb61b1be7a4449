"""prepare_for_inference (fuse, fp16, channels-last, input casting) and prediction_agreement."""
import copy

import numpy as np
import pytest
import torch

from repseg.inference import predict_labels, prediction_agreement, prepare_for_inference
from repseg.mmseg.fast_psp import FastPPM
from repseg.models.block import RepVGGBlock
from tiny_models import one_cpu_thread, tiny_segmentor  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures('one_cpu_thread')


@pytest.fixture(scope='module')
def segmentor():
    return tiny_segmentor()


@pytest.fixture(scope='module')
def images():
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, 3, 48, 80), dtype=torch.uint8, generator=generator)


def test_fp32_fused_model_agrees_with_train_time(segmentor, images):
    fused = prepare_for_inference(copy.deepcopy(segmentor))
    assert all(block.is_fused for block in fused.modules() if isinstance(block, RepVGGBlock))
    assert not isinstance(fused.decode_head.psp_modules, FastPPM)  # fp32 NCHW: not needed
    assert prediction_agreement(segmentor, fused, images) >= 0.999


@pytest.mark.parametrize('half_dtype, minimum', [(torch.float16, 0.99), (torch.bfloat16, 0.95)])
def test_half_channels_last_agrees_with_fp32(segmentor, images, half_dtype, minimum):
    half = prepare_for_inference(copy.deepcopy(segmentor), fp16=True, channels_last=True,
                                 half_dtype=half_dtype)
    assert isinstance(half.decode_head.psp_modules, FastPPM)
    assert next(half.backbone.parameters()).dtype == half_dtype
    assert half.data_preprocessor.mean.dtype == torch.float32  # normalization stays exact
    image = images[0]
    data = half.data_preprocessor(dict(inputs=[image]), False)
    sample = half.predict(data['inputs'])[0]
    assert sample.seg_logits.data.dtype == half_dtype
    assert sample.pred_sem_seg.data.shape == (1, 48, 80)
    agreement = prediction_agreement(segmentor, half, images)
    print(f'{half_dtype} channels-last vs fp32: {100 * agreement:.2f}% pixels agree')
    assert agreement >= minimum


def test_agreement_detects_different_models_and_accepts_arrays(segmentor, images):
    other = tiny_segmentor(seed=1)
    arrays = [np.ascontiguousarray(image.permute(1, 2, 0).numpy()) for image in images]
    assert prediction_agreement(segmentor, segmentor, arrays) == 1.0
    assert prediction_agreement(segmentor, other, arrays) < 0.9
    assert predict_labels(segmentor, arrays[0]).shape == (48, 80)
    with pytest.raises(ValueError, match='at least one image'):
        prediction_agreement(segmentor, other, [])


def test_channels_last_hook_is_replaced_not_stacked(segmentor):
    model = prepare_for_inference(copy.deepcopy(segmentor), channels_last=True)
    prepare_for_inference(model, channels_last=True)
    assert len(model.backbone._forward_pre_hooks) == 1


@pytest.mark.parametrize('flags, native', [
    ({'avx2', 'fma'}, False),                           # AMD EPYC of docs/quantization.md
    ({'avx2', 'avx512f', 'avx512bw', 'avx512_vnni'}, False),  # AVX-512 without BF16
    ({'avx512f', 'avx512_bf16', 'amx_bf16'}, True),     # this Xeon
])
def test_bfloat16_is_native_only_with_its_cpu_flags(flags, native, monkeypatch):
    import repseg.inference as inference

    monkeypatch.setattr(inference, 'cpu_flags', lambda: frozenset(flags))
    monkeypatch.setattr(torch.ops.mkldnn, '_is_mkldnn_bf16_supported', lambda: True)
    assert inference.cpu_has_fast_bfloat16() is native
