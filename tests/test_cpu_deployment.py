"""CPU deployment of a briefly trained tiny PSPNet-RepVGG-A0: INT8 with an accuracy gate
(tools/quantize.py, repseg.quantization), .onnx models in tools/test.py and tools/infer.py,
bfloat16, and the backend comparison of tools/benchmark.py.

Oracles: the graph is read with onnx (QDQ pairs around every conv); agreement is measured
between PyTorch fp32 predictions and ONNX Runtime called directly; the mIoU of an .onnx
model through tools/test.py is recomputed here with numpy from ONNX Runtime's labels.
"""
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from repseg.export import image_batch, synthetic_image
from repseg.inference import predict_labels
from repseg.mmseg.builder import load_config
from repseg.models.reparam import reparameterize
from repseg.quantization import GateSettings, QuantSettings, quantize_segmentor
from repseg.data.toy_city import make_toy_cityscapes
from tiny_models import (DEMO_CONFIG, briefly_trained_segmentor, load_tool,  # noqa: F401
                         one_cpu_thread, toy_options)

pytestmark = pytest.mark.usefixtures('one_cpu_thread')

NUM_VAL = 8
#: The fused conv made sensitive on purpose (a block in the middle of stage 3).
SABOTAGED = 'backbone.stages.2.5.fused'


@pytest.fixture(scope='module')
def toy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('toy_city')
    make_toy_cityscapes(root, num_train=8, num_val=NUM_VAL, size=(64, 128), seed=7)
    return root


@pytest.fixture(scope='module')
def trained(toy_root, tmp_path_factory):
    """A briefly trained tiny segmentor, its checkpoint and a config file for the tools."""
    folder = tmp_path_factory.mktemp('trained')
    with torch.random.fork_rng():
        model = briefly_trained_segmentor(toy_root)
    checkpoint = folder / 'tiny.pth'
    torch.save({'state_dict': model.state_dict()}, checkpoint)
    config = folder / 'tiny_toy.py'
    load_config(DEMO_CONFIG, toy_options(toy_root)).dump(str(config))
    return dict(model=model, checkpoint=checkpoint, config=config)


@pytest.fixture(scope='module')
def int8(trained, toy_root, tmp_path_factory):
    """The trained model quantized with the defaults, gated on the val split's mIoU (a
    loose gate: 8 images of a barely trained model make a noisy mIoU)."""
    out = tmp_path_factory.mktemp('int8') / 'tiny_int8.onnx'
    report = quantize_segmentor(trained['config'], trained['checkpoint'], out, 'val',
                                num_calib=4, gate=GateSettings(max_drop=5.0, max_float=0),
                                threads=1, progress=False)
    return dict(path=out, report=report)


def val_images(toy_root):
    paths = sorted(Path(toy_root, 'leftImg8bit', 'val').rglob('*_leftImg8bit.png'))
    assert len(paths) == NUM_VAL
    return paths


def label_path(toy_root, image_path):
    relative = image_path.relative_to(Path(toy_root, 'leftImg8bit'))
    name = relative.name.replace('_leftImg8bit.png', '_gtFine_labelTrainIds.png')
    return Path(toy_root, 'gtFine', relative.parent, name)


def ort_labels(path, image):
    """Labels of an ONNX segmentor, ONNX Runtime called directly (logits output, arg-max
    here): not through repseg's wrapper, which the tools use."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    output = session.run(None, {'image': image_batch(image)})[0]
    return output.argmax(axis=1)[0]


def test_quantized_graph_has_qdq_around_every_conv(int8):
    graph = onnx.load(str(int8['path'])).graph
    producers = {output: node for node in graph.node for output in node.output}
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    convs = [node for node in graph.node if node.op_type == 'Conv']
    assert len(convs) == int8['report'].quantized_layers > 20
    for conv in convs:
        activation, weight = (producers.get(name) for name in conv.input[:2])
        assert activation is not None and activation.op_type == 'DequantizeLinear', conv.name
        assert weight.op_type == 'DequantizeLinear', conv.name
        assert producers[activation.input[0]].op_type == 'QuantizeLinear', conv.name
        weights = next(i for i in graph.initializer if i.name == weight.input[0])
        assert weights.data_type == onnx.TensorProto.INT8
        scales = next(i for i in graph.initializer if i.name == weight.input[1])
        assert list(scales.dims) == [weights.dims[0]]  # one scale per output channel
        if conv.name != '/conv_seg/Conv':  # the classifier feeds the final resize
            assert [c.op_type for c in consumers[conv.output[0]]] == ['QuantizeLinear']


def test_trained_model_keeps_95_percent_of_pixels(int8, trained, toy_root):
    report = int8['report']
    assert report.passed and report.written and not report.kept_float
    assert report.check.startswith('mIoU')
    same = total = 0
    for path in val_images(toy_root):
        image = cv2.imread(str(path))
        expected = predict_labels(trained['model'], image).numpy()
        same += int((ort_labels(int8['path'], image) == expected).sum())
        total += expected.size
    agreement = same / total
    print(f'INT8 vs PyTorch fp32: {100 * agreement:.2f}% of pixels; gate: {report.summary()}')
    assert agreement >= 0.95
    assert abs(100 * agreement - report.final.agreement) < 1.0  # fp32 ORT == PyTorch
    saved = json.loads(int8['path'].with_suffix('.json').read_text())
    assert saved['passed'] and saved['settings']['per_channel']


def test_sensitivity_step_keeps_the_sabotaged_layer_in_float(trained, toy_root, tmp_path):
    """One channel of a fused kernel scaled by 1e4 (a dead channel, so the float model
    computes the same function) wrecks per-tensor weight scales of that layer only."""
    fused = reparameterize(trained['model'])
    conv = fused.get_submodule(SABOTAGED)
    with torch.no_grad():
        conv.weight[3] = -conv.weight[3].abs() * 1e4  # inputs are ReLU outputs: always < 0
        conv.bias[3] = -1e4
    checkpoint = tmp_path / 'sabotaged.pth'
    torch.save({'state_dict': fused.state_dict()}, checkpoint)
    options = {**toy_options(toy_root), 'model.backbone.deploy': True,
               'test_dataloader.dataset.data_root': str(tmp_path / 'no_labels_here')}
    report = quantize_segmentor(
        DEMO_CONFIG, checkpoint, tmp_path / 'fixed.onnx',
        str(Path(toy_root, 'leftImg8bit', 'val')), num_calib=4,
        settings=QuantSettings(per_channel=False),
        gate=GateSettings(min_agreement=90.0, probe_images=2), threads=1,
        cfg_options=options, progress=False)
    print(report.summary())
    assert report.check.startswith('pixel agreement on 4 calibration-excluded')
    assert report.int8_all_layers.agreement < 80.0
    assert report.sensitivity[0][0] == SABOTAGED
    assert report.kept_float == [SABOTAGED] and report.passed
    graph = onnx.load(str(tmp_path / 'fixed.onnx')).graph
    kept = next(n for n in graph.node if n.op_type == 'Conv' and 'stages.2.5/' in n.name)
    weight = next(i for i in graph.initializer if i.name == kept.input[1])
    assert weight.data_type == onnx.TensorProto.FLOAT


def test_gate_fails_loudly_and_writes_no_model(trained, tmp_path, capsys):
    tool = load_tool('quantize')
    out = tmp_path / 'never.onnx'
    argv = [str(trained['config']), str(trained['checkpoint']), str(out), '--calib', 'val',
            '--num-calib', '2', '--per-tensor', '--max-float', '0', '--max-drop', '-100',
            '--threads', '1', '--no-progress']
    with pytest.raises(SystemExit) as exit_info:
        tool.main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert 'error: the INT8 model failed its accuracy gate: mIoU drop' in captured.err
    assert 'limit --max-drop -100' in captured.err and 'was not written' in captured.err
    assert 'gate FAILED' in captured.out
    assert not out.exists()
    assert json.loads((tmp_path / 'never.json').read_text())['passed'] is False
    out.write_bytes(b'precious')  # an existing output is never overwritten silently
    with pytest.raises(SystemExit) as exit_info:
        tool.main(argv)
    assert exit_info.value.code == 2 and '--force' in capsys.readouterr().err
    assert out.read_bytes() == b'precious'


def test_test_tool_on_onnx_matches_onnxruntime_called_directly(int8, trained, toy_root,
                                                               tmp_path):
    from repseg.mmseg.runner import run_test

    metrics = run_test(trained['config'], int8['path'], work_dir=str(tmp_path))
    num_classes = 19
    intersection, union = np.zeros(num_classes), np.zeros(num_classes)
    for path in val_images(toy_root):
        labels = ort_labels(int8['path'], cv2.imread(str(path)))
        truth = cv2.imread(str(label_path(toy_root, path)), cv2.IMREAD_UNCHANGED)
        valid = truth != 255
        for c in range(num_classes):
            pred_c, true_c = (labels == c) & valid, (truth == c) & valid
            intersection[c] += (pred_c & true_c).sum()
            union[c] += (pred_c | true_c).sum()
    present = union > 0
    expected = 100 * np.mean(intersection[present] / union[present])
    assert metrics['mIoU'] == pytest.approx(expected, abs=0.01)
    record = json.loads((tmp_path / 'metrics.json').read_text())
    assert record['backend'] == 'onnxruntime'


def test_infer_tool_on_onnx_matches_onnxruntime_called_directly(int8, trained, toy_root,
                                                                tmp_path):
    tool = load_tool('infer')
    folder = Path(toy_root, 'leftImg8bit', 'val')
    tool.main([str(trained['config']), str(int8['path']), str(folder), '--out-dir',
               str(tmp_path), '--no-progress', '--batch-size', '3'])
    for path in val_images(toy_root):
        written = cv2.imread(str(tmp_path / path.relative_to(folder).with_suffix(''))
                             + '_trainIds.png', cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(written, ort_labels(int8['path'], cv2.imread(str(path))))
    with pytest.raises(SystemExit) as exit_info:  # precision flags are for PyTorch models
        tool.main([str(trained['config']), str(int8['path']), str(folder), '--out-dir',
                   str(tmp_path), '--bf16'])
    assert exit_info.value.code == 2


def test_bf16_infer_and_test_agree_with_fp32(int8, trained, toy_root, tmp_path):
    from repseg.inference import prediction_agreement
    from repseg.mmseg.runner import run_test
    from repseg.segment import load_segmentor

    model = load_segmentor(trained['config'], trained['checkpoint'], bf16=True)
    assert next(model.backbone.parameters()).dtype == torch.bfloat16
    images = [cv2.imread(str(path)) for path in val_images(toy_root)[:2]]
    agreement = prediction_agreement(trained['model'], model, images)
    print(f'bfloat16 vs float32: {100 * agreement:.2f}% of pixels alike')
    assert agreement >= 0.97
    two_images = {'test_dataloader.dataset.indices': 2}
    metrics = run_test(trained['config'], trained['checkpoint'], work_dir=str(tmp_path),
                       bf16=True, cfg_options=two_images)
    record = json.loads((tmp_path / 'metrics.json').read_text())
    assert record['bf16'] is True and record['backend'] == 'pytorch'
    assert 0 < metrics['mIoU'] <= 100


def test_benchmark_compares_backends_in_one_run(int8, trained, tmp_path, capsys):
    out = tmp_path / 'backends.json'
    load_tool('benchmark').main([
        str(trained['config']), str(trained['checkpoint']), '--shape', '64', '128',
        '--device', 'cpu', '--threads', '1', '--int8', str(int8['path']), '--bf16',
        '--warmup', '0', '--iters', '2', '--no-flops', '--json', str(out)])
    records = json.loads(out.read_text())
    assert [(r['backend'], r['dtype']) for r in records] == [
        ('pytorch', 'float32'), ('pytorch', 'bfloat16'), ('onnxruntime', 'float32'),
        ('onnxruntime', 'int8')]
    assert [r['fps_ratio'] for r in records][0] == 1.0
    agreement = {r['dtype'] + r['backend']: r['label_agreement'] for r in records}
    assert agreement['float32onnxruntime'] >= 0.999  # the same function, another runtime
    # The INT8 agreement, recounted on the benchmark's own image: ONNX Runtime called
    # directly against the unfused float model. How close INT8 comes to fp32 depends on
    # how the briefly trained model came out on this CPU (94.7% on one CI machine), so
    # the recount is the oracle, not a fixed floor; the floor only rules out garbage.
    image = synthetic_image((64, 128))
    expected = predict_labels(trained['model'], image).numpy()
    recount = float((ort_labels(int8['path'], image) == expected).mean())
    print(f'INT8 agreement: benchmark {agreement["int8onnxruntime"]:.4f}, recount {recount:.4f}')
    assert abs(agreement['int8onnxruntime'] - recount) <= 0.002  # fusion's float noise
    assert agreement['int8onnxruntime'] >= 0.8 and agreement['bfloat16pytorch'] >= 0.95
    printed = capsys.readouterr().out
    assert 'the speed of ONNX Runtime fp32' in printed and '% of pixels labelled as' in printed
