"""The speed paths of repseg.fast_inference.

CPU: every path that can run or fall back on CPU (conv+ReLU modules on their plain path,
the compiled resize + arg-max, fallbacks when an op or a compiler fails, reports).
CUDA (marker ``cuda``, skipped without a GPU): cuDNN conv+ReLU (and conv+add+ReLU of the
factored PSP head) against the plain path,
CUDA graph replay against eager calls, the compiled resize + arg-max on the GPU.
Oracles: the unmodified model (mmseg's own predict path), float64 resizes, direct
``F.conv2d``.
"""
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule

from repseg.fast_inference import SegmentationPredictor, SpeedOptions
from repseg.fast_inference import conv_relu as conv_relu_module
from repseg.fast_inference.conv_relu import ConvBNReLU, Conv2dReLU, use_conv_relu
from repseg.fast_inference.psp_head import interpolation_matrix, use_factored_psp_head
from repseg.fast_inference.resize_argmax import FusedResizeArgmax, resize_argmax
from repseg.speed.models import smooth_inputs
from repseg.inference import prepare_for_inference
from repseg.models.block import RepVGGBlock
from tiny_models import TINY_CONFIG, load_tool, tf32, tiny_segmentor

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
pytestmark = pytest.mark.usefixtures('single_thread')


@pytest.fixture(scope='module')
def fused_tiny():
    """The tiny PSPNet-A0, re-parameterized, eval mode, float32 (copy before changing)."""
    return prepare_for_inference(tiny_segmentor(seed=3), fuse=True)


def mmseg_labels(model, inputs):
    """Labels of mmseg's own predict path (the oracle every predictor must match)."""
    with torch.no_grad():
        return torch.stack([s.pred_sem_seg.data[0] for s in model.predict(inputs)])


def test_predictor_without_options_equals_mmseg_predict(fused_tiny):
    inputs = smooth_inputs(2, (64, 96), 'cpu')
    predictor = SegmentationPredictor(copy.deepcopy(fused_tiny), inputs)
    labels = predictor(inputs)
    expected = mmseg_labels(fused_tiny, inputs)
    assert labels.dtype == torch.int64 and labels.shape == (2, 64, 96)
    assert expected.unique().numel() > 5  # varied predictions, not one class
    assert torch.equal(labels, expected)
    assert predictor.report.summary() == 'no speed options requested'


def test_conv_relu_modules_keep_outputs_and_state_dict(fused_tiny):
    """On CPU the converted modules run F.conv2d + ReLU: the RepVGG blocks exactly, the
    heads up to the BN fold's rounding (float64 here); the state dict keeps its keys and
    loads into an unconverted model with the same outputs."""
    reference = copy.deepcopy(fused_tiny).double()
    model = copy.deepcopy(reference)
    change = use_conv_relu(model)
    blocks = [m for m in reference.modules() if isinstance(m, RepVGGBlock)]
    conv_modules = [m for m in reference.modules() if isinstance(m, ConvModule)]
    assert (change.blocks, change.conv_modules, change.skipped) == \
        (len(blocks), len(conv_modules), {})
    assert sum(isinstance(m, Conv2dReLU) for m in model.modules()) == len(blocks)
    assert sum(isinstance(m, ConvBNReLU) for m in model.modules()) == len(conv_modules)

    x = smooth_inputs(1, (64, 96), 'cpu').double()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model.backbone(x), reference.backbone(x)))
        logits, expected = model(x, mode='tensor'), reference(x, mode='tensor')
        torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-10)

        state = model.state_dict()
        assert list(state) == list(reference.state_dict())
        plain = copy.deepcopy(fused_tiny).double()
        plain.load_state_dict(state)
        torch.testing.assert_close(plain(x, mode='tensor'), expected, rtol=1e-10, atol=1e-10)
    assert use_conv_relu(model).blocks == 0  # idempotent: nothing left to convert


def test_conv_relu_leaves_unfused_blocks_and_training_bn_alone():
    model = tiny_segmentor(seed=1)
    model.decode_head.bottleneck.train()
    change = use_conv_relu(model)
    assert change.blocks == 0 and change.conv_modules == 5  # 4 PPM + auxiliary head
    assert change.skipped['decode_head.bottleneck'] == 'BN in training mode'
    assert '22 x RepVGG block not re-parameterized' in change.describe()


def test_conv_relu_falls_back_when_the_cudnn_op_fails(fused_tiny, monkeypatch):
    """A failing fused op (as where cuDNN rejects a layer) leaves the plain path's output
    and records the error; later calls do not retry it."""
    model = copy.deepcopy(fused_tiny)
    use_conv_relu(model)
    conv = model.backbone.stages[1][0].fused
    calls = []

    def failing_op(*args):
        calls.append(args)
        raise RuntimeError('cuDNN error: CUDNN_STATUS_NOT_SUPPORTED\nmore text')

    monkeypatch.setattr(torch, 'cudnn_convolution_relu', failing_op)
    monkeypatch.setattr(conv_relu_module, '_takes_cudnn', lambda module, x: module.use_cudnn)
    x = torch.randn(1, conv.in_channels, 12, 16)
    expected = torch.relu(F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding,
                                   conv.dilation, conv.groups))
    with torch.no_grad():
        torch.testing.assert_close(conv(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(conv(x), expected, rtol=0, atol=0)
    assert len(calls) == 1 and not conv.use_cudnn
    assert conv.cudnn_error == 'RuntimeError: cuDNN error: CUDNN_STATUS_NOT_SUPPORTED'


@pytest.mark.parametrize('length, bins, align_corners',
                         [(128, 6, False), (37, 3, False), (20, 1, False), (33, 6, True),
                          (5, 2, True)])
def test_interpolation_matrix_is_what_f_interpolate_computes(length, bins, align_corners):
    y = torch.randn(4, bins, dtype=torch.float64)
    expected = F.interpolate(y[None], size=length, mode='linear', align_corners=align_corners)
    torch.testing.assert_close(interpolation_matrix(length, bins, align_corners) @ y.T,
                               expected[0].T, rtol=0, atol=1e-14)


@pytest.mark.parametrize('channels_last, fast_pooling', [(False, False), (True, True)])
def test_factored_psp_head_equals_the_original_head(fused_tiny, channels_last, fast_pooling):
    """float64, odd sizes: the bottleneck without upsampled bins is the same function;
    state-dict keys unchanged, and the state dict loads into an unmodified model."""
    def prepared():
        return prepare_for_inference(copy.deepcopy(fused_tiny).double(), fuse=True,
                                     channels_last=channels_last, fast_pooling=fast_pooling)

    reference, model, plain = prepared(), prepared(), prepared()
    assert use_factored_psp_head(model) == {'decode_head': None}
    assert type(model.decode_head).__name__ == 'FactoredPSPHead'
    x = smooth_inputs(1, (72, 104), 'cpu').double()
    with torch.no_grad():
        expected = reference(x, mode='tensor')
        torch.testing.assert_close(model(x, mode='tensor'), expected, rtol=1e-12, atol=1e-12)
        assert list(model.state_dict()) == list(reference.state_dict())
        plain.load_state_dict(model.state_dict())
        torch.testing.assert_close(plain(x, mode='tensor'), expected, rtol=1e-12, atol=1e-12)


def test_options_that_need_cuda_are_reported_not_applied_on_cpu(fused_tiny):
    inputs = smooth_inputs(1, (64, 96), 'cpu', seed=1)
    predictor = SegmentationPredictor(
        copy.deepcopy(fused_tiny), inputs,
        SpeedOptions(conv_relu=True, factored_psp=True, cuda_graph=True))
    labels = predictor(inputs)
    assert (labels == mmseg_labels(fused_tiny, inputs)).double().mean() >= 0.999
    report = predictor.report
    assert list(report.outcomes) == ['conv_relu', 'factored_psp', 'cuda_graph']
    assert not report.applied('conv_relu') and not report.applied('cuda_graph')
    assert report.applied('factored_psp')  # runs on CPU too (without the cuDNN epilogue)
    assert 'CUDA only' in report.outcomes['conv_relu'].detail
    assert 'converted 22 RepVGG blocks, 6 conv-BN-ReLU modules' in \
        report.outcomes['conv_relu'].detail
    assert report.to_dict()['cuda_graph'] == dict(
        applied=False, detail='inputs on cpu, CUDA graphs need CUDA')


def test_compiler_failures_fall_back_to_eager(fused_tiny, monkeypatch):
    """Without a working compiler, both compiled paths report why and stay eager."""
    def broken_compile(fn, **kwargs):
        def call(*args):
            raise RuntimeError('InductorError: no C++ compiler found')
        return call

    monkeypatch.setattr(torch, 'compile', broken_compile)
    inputs = smooth_inputs(1, (64, 96), 'cpu', seed=2)
    expected = mmseg_labels(fused_tiny, inputs)
    for options in (SpeedOptions(resize_argmax=True), SpeedOptions(compile_model=True)):
        predictor = SegmentationPredictor(copy.deepcopy(fused_tiny), inputs, options)
        assert torch.equal(predictor(inputs), expected)
        name = options.names()[0]
        assert not predictor.report.applied(name)
        assert 'no C++ compiler found' in predictor.report.outcomes[name].detail


def top2_margin(logits64, size):
    """Per-pixel gap between the two largest classes of the float64 resized logits."""
    resized = F.interpolate(logits64, size=size, mode='bilinear', align_corners=False)
    top2 = resized.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_fused_resize_argmax_matches_eager_on_a_real_size_map(dtype):
    """19 classes at 128x256 (PSPNet's logits of a 1024x2048 frame) to 1024x2048: the
    compiled kernel agrees with eager on >= 99.99% of pixels and on every pixel whose two
    best classes differ by more than 1e-3."""
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(1, 19, 128, 256, generator=generator, dtype=torch.float64)
    size = (1024, 2048)
    fused = FusedResizeArgmax()
    labels = fused(logits.to(dtype), size)
    assert fused.compiled, fused.error
    eager = resize_argmax(logits.to(dtype), size)
    assert labels.shape == (1, *size) and labels.dtype == torch.int64
    assert (labels == eager).double().mean() >= 0.9999
    clear = top2_margin(logits, size) > 1e-3
    assert torch.equal(labels[clear], eager[clear])


def test_benchmark_variants_times_each_path_against_the_fp32_reference(tmp_path, capsys):
    out = tmp_path / 'variants.json'
    load_tool('benchmark').main([
        str(TINY_CONFIG), '--shape', '48', '64', '--device', 'cpu', '--warmup', '0',
        '--iters', '1', '--rounds', '1', '--json', str(out), '--variants', 'mmseg predict',
        'predictor', '+conv_relu', '+cuda_graph'])
    result = json.loads(out.read_text())
    records = {r['variant']: r for r in result['records']}
    assert list(records) == ['mmseg predict', 'predictor', '+conv_relu', '+cuda_graph']
    assert result['reference_classes'] > 2  # BN calibration: varied predictions
    # fused fp32 NCHW is the reference itself: identical labels; the BN fold rounds
    assert records['mmseg predict']['label_agreement'] == 1
    assert records['predictor']['label_agreement'] == 1
    assert records['+conv_relu']['label_agreement'] >= 0.999
    assert records['+cuda_graph']['outcomes'] == {'cuda_graph': dict(
        applied=False, detail='inputs on cpu, CUDA graphs need CUDA')}
    assert records['+conv_relu']['options'] == ['conv_relu']
    assert all(r['fps'] > 0 and r['fps_ratio'] > 0 and r['iters'] == 1
               for r in records.values())
    printed = capsys.readouterr().out
    assert '| +conv_relu ' in printed and 'Options that did not take effect' in printed


def test_speed_variants_alias_points_to_benchmark_and_refuses_unknown_variants(capsys):
    tool = load_tool('speed_variants')
    with pytest.raises(SystemExit) as exit_info:
        tool.main([str(TINY_CONFIG), '--device', 'cpu', '--variants', 'turbo'])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "unknown variants ['turbo']" in captured.err
    assert captured.out.startswith('tools/speed_variants.py is now: tools/benchmark.py ')
    assert '--variants turbo' in captured.out and '--fp16 --channels-last' in captured.out


# ---------------------------------------------------------------------------------- CUDA

def fp16_channels_last_on_cuda(model):
    return prepare_for_inference(copy.deepcopy(model).cuda(), fp16=True, channels_last=True)


@pytest.fixture
def no_tf32():
    with tf32(False):
        yield


@pytest.mark.cuda
@cuda
def test_cuda_cudnn_conv_relu_matches_plain_path_fp32(fused_tiny, no_tf32):
    reference = copy.deepcopy(fused_tiny).cuda()
    inputs = smooth_inputs(1, (256, 512), 'cuda')
    predictor = SegmentationPredictor(copy.deepcopy(reference), inputs,
                                      SpeedOptions(conv_relu=True, factored_psp=True))
    assert predictor.report.applied('factored_psp'), predictor.report.summary()
    with torch.no_grad():
        logits = predictor.model(inputs, mode='tensor')
        expected = reference(inputs, mode='tensor')
    scale = expected.abs().max()
    torch.testing.assert_close(logits / scale, expected / scale, rtol=1e-4, atol=1e-4)
    # cuDNN's runtime-fused engines favour tensor cores: fp32 NCHW without TF32 may have
    # none (then every module falls back, exactly, and says so). That is cuDNN's answer,
    # not a fault; the fp16 channels-last test below demands the fused op.
    detail = predictor.report.outcomes['conv_relu'].detail
    print(f'conv_relu in fp32, TF32 off: {detail}')
    if not predictor.report.applied('conv_relu'):
        pytest.skip(f'no cuDNN conv-bias-ReLU engine for fp32 without TF32 here: {detail}')


@pytest.mark.cuda
@cuda
def test_cuda_cudnn_conv_relu_fp16_channels_last_pixel_agreement(fused_tiny):
    plain = fp16_channels_last_on_cuda(fused_tiny)
    inputs = smooth_inputs(1, (1024, 2048), 'cuda')
    predictor = SegmentationPredictor(copy.deepcopy(plain), inputs,
                                      SpeedOptions(conv_relu=True))
    assert predictor.report.applied('conv_relu'), predictor.report.summary()
    labels, expected = predictor(inputs), mmseg_labels(plain, inputs)
    assert expected.unique().numel() > 2
    assert (labels == expected).float().mean() >= 0.995


@pytest.mark.cuda
@cuda
def test_cuda_graph_replay_equals_eager_calls(fused_tiny):
    model = fp16_channels_last_on_cuda(fused_tiny)
    example = smooth_inputs(1, (256, 512), 'cuda', seed=0)
    other = smooth_inputs(1, (256, 512), 'cuda', seed=1)
    eager = SegmentationPredictor(copy.deepcopy(model), example)
    graphed = SegmentationPredictor(model, example, SpeedOptions(cuda_graph=True))
    assert graphed.report.applied('cuda_graph'), graphed.report.summary()
    first, second = graphed(other), graphed(example)
    assert torch.equal(first, eager(other)) and torch.equal(second, eager(example))
    assert not torch.equal(first, second)  # a replay does not overwrite earlier results
    bigger = smooth_inputs(1, (256, 640), 'cuda')  # another shape: runs eager
    assert torch.equal(graphed(bigger), eager(bigger))


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_cuda_fused_resize_argmax_agreement(dtype):
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(1, 19, 128, 256, generator=generator, dtype=torch.float64)
    size = (1024, 2048)
    low = logits.to(dtype).cuda().contiguous(memory_format=torch.channels_last)
    fused = FusedResizeArgmax()
    labels = fused(low, size).cpu()
    assert fused.compiled, fused.error
    oracle = resize_argmax(low.double(), size).cpu()  # float64 from the same rounded logits
    assert (labels == oracle).double().mean() >= 0.9999
    clear = top2_margin(low.double().cpu(), size) > 1e-3
    assert torch.equal(labels[clear], oracle[clear])
    eager = resize_argmax(low, size).cpu()
    assert (labels == eager).double().mean() >= (0.9999 if dtype == torch.float32 else 0.999)


@pytest.mark.cuda
@cuda
def test_cuda_all_options_agree_with_mmseg_predict(fused_tiny):
    model = fp16_channels_last_on_cuda(fused_tiny)
    inputs = smooth_inputs(1, (512, 1024), 'cuda')
    expected = mmseg_labels(model, inputs)
    predictor = SegmentationPredictor(copy.deepcopy(model), inputs, SpeedOptions.all())
    for name in ('conv_relu', 'factored_psp', 'resize_argmax', 'cuda_graph'):
        assert predictor.report.applied(name), predictor.report.summary()
    assert (predictor(inputs) == expected).float().mean() >= 0.995
