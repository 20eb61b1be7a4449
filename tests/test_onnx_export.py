"""ONNX export of the fused segmentor: onnxruntime matches mmseg's predict path."""
import copy

import onnx
import pytest
import torch

from repseg.export import export_onnx, image_batch, synthetic_image, verify_onnx
from repseg.inference import prepare_for_inference
from repseg.onnx_backend import OnnxGraph
from repseg.models.block import RepVGGBlock
from tiny_models import (TINY_CONFIG, load_tool, one_cpu_thread,  # noqa: F401 (fixture)
                         tiny_segmentor)

SHAPE = (48, 80)

pytestmark = pytest.mark.usefixtures('one_cpu_thread')


@pytest.fixture(scope='module')
def segmentor():
    return tiny_segmentor()


def test_logits_match_and_graph_is_fused(segmentor, tmp_path):
    path = tmp_path / 'tiny.onnx'
    wrapper = export_onnx(segmentor, path, SHAPE)
    assert any(not b.is_fused for b in segmentor.modules() if isinstance(b, RepVGGBlock))
    graph = onnx.load(str(path)).graph
    convs = [n for n in graph.node if n.op_type == 'Conv']
    inference_path = [wrapper.segmentor.backbone, wrapper.segmentor.decode_head]
    torch_convs = [m for part in inference_path for m in part.modules()
                   if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == len(torch_convs)  # one conv per fused block, no branches
    assert not any('Pool' in n.op_type for n in graph.node)  # pyramid pooling as MatMul
    assert onnx.load(str(path)).opset_import[0].version >= 17
    assert [i.name for i in graph.input] == ['image'] and [o.name for o in graph.output] == [
        'logits']  # the names the README documents
    check = verify_onnx(path, wrapper, synthetic_image(SHAPE))
    print(f'tiny PSPNet logits, max |onnxruntime - torch| = {check.max_abs_diff:.2e}')
    assert check.max_abs_diff < 1e-3 and check.passed
    assert check.label_agreement >= 0.999


def test_dynamic_labels_match_torch_argmax(segmentor, tmp_path):
    path = tmp_path / 'tiny_labels.onnx'
    wrapper = export_onnx(segmentor, path, SHAPE, dynamic=True, labels=True)
    graph = OnnxGraph(path)
    for shape in [SHAPE, (61, 37)]:  # a size the example never had, odd on purpose
        check = verify_onnx(path, wrapper, synthetic_image(shape, seed=1), graph)
        assert check.label_agreement >= 0.999, (shape, check)
    batch = image_batch(synthetic_image(SHAPE)).repeat(2, axis=0)
    labels = graph.run(batch)
    assert labels.shape == (2, *SHAPE) and labels.dtype.name == 'uint8'
    assert [o.name for o in onnx.load(str(path)).graph.output] == ['labels']


def test_export_of_a_model_prepared_for_fp16(segmentor, tmp_path):
    half = prepare_for_inference(copy.deepcopy(segmentor), fp16=True, channels_last=True)
    path = tmp_path / 'from_half.onnx'
    wrapper = export_onnx(half, path, SHAPE)
    assert next(half.parameters()).dtype == torch.float16  # the model itself is unchanged
    assert verify_onnx(path, wrapper, synthetic_image(SHAPE)).max_abs_diff < 1e-3


def test_cli_round_trip_and_user_errors(tmp_path, capsys):
    tool = load_tool('export_onnx')
    checkpoint = tmp_path / 'tiny.pth'
    torch.save({'state_dict': tiny_segmentor().state_dict()}, checkpoint)
    out = tmp_path / 'cli.onnx'
    tool.main([str(TINY_CONFIG), str(checkpoint), str(out), '--shape', *map(str, SHAPE)])
    assert 'max |onnxruntime - torch| on logits' in capsys.readouterr().out
    assert out.is_file()
    for argv in ([str(TINY_CONFIG), str(tmp_path / 'missing.pth'), str(out)],
                 [str(TINY_CONFIG), str(checkpoint), str(out), '--opset', '13']):
        with pytest.raises(SystemExit) as exit_info:
            tool.main(argv)
        assert exit_info.value.code == 2
    assert 'opset must be >= 17' in capsys.readouterr().err
