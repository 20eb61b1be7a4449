"""The INT8 accuracy gate on a real mIoU drop (every end-to-end quantization test passes
its gate, so the sign of the drop was never tested)."""
import pytest

from repseg.quantization.accuracy import Scores
from repseg.quantization.gate import GateSettings, QuantReport, _passes


def report(fp32_miou, int8_miou, passed):
    scores = Scores(agreement=97.0, miou=int8_miou)
    return QuantReport(config='c.py', checkpoint=None, out='m.onnx', settings={}, check='val',
                       gate=dict(max_drop=1.0, min_agreement=98.0), calibration_images=4,
                       shape=None, fp32=Scores(agreement=100.0, miou=fp32_miou),
                       int8_all_layers=scores, final=scores, passed=passed)


@pytest.mark.parametrize('int8_miou, passes', [(68.5, False), (69.25, True), (71.0, True)])
def test_gate_limits_the_mIoU_lost(int8_miou, passes):
    fp32 = Scores(agreement=100.0, miou=70.0)
    assert _passes(fp32, Scores(agreement=97.0, miou=int8_miou), GateSettings()) is passes
    assert report(70.0, int8_miou, passes).drop == pytest.approx(70.0 - int8_miou)


def test_gate_text_and_json_report_a_drop_as_points_lost():
    failed = report(70.0, 68.5, False)
    assert 'gate FAILED: mIoU drop 1.50 points (fp32 70.00, INT8 68.50; limit --max-drop 1)' \
        in failed.summary()
    assert failed.to_dict()['drop'] == pytest.approx(1.5)


def test_without_labels_the_gate_counts_agreeing_pixels():
    fp32 = Scores(agreement=100.0)
    assert _passes(fp32, Scores(agreement=98.5), GateSettings()) is True
    assert _passes(fp32, Scores(agreement=97.9), GateSettings()) is False
