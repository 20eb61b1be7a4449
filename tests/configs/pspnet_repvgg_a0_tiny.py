# Test-only: PSPNet on a dilated RepVGG-A0 with narrow heads, small enough for CPU tests
# (benchmark, ONNX export, fast pyramid pooling). Random weights, 'whole' inference.
_base_ = '../../configs/pspnet_repvgg_b2.py'
model = dict(
    backbone=dict(arch='A0', init_cfg=None),
    decode_head=dict(in_channels=1280, channels=32),
    auxiliary_head=dict(in_channels=192, channels=16),
    test_cfg=dict(_delete_=True, mode='whole'))
