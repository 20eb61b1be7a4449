# Baseline: mmseg's PSPNet on ResNetV1c-50-D8, same data, crop and schedule as RepVGG.
_base_ = './pspnet_repvgg_b2.py'
model = dict(
    pretrained='open-mmlab://resnet50_v1c',
    backbone=dict(
        _delete_=True,
        type='ResNetV1c',
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        dilations=(1, 1, 2, 4),
        strides=(1, 2, 1, 1),
        norm_cfg={{_base_.norm_cfg}},
        norm_eval=False,
        style='pytorch',
        contract_dilation=True),
    decode_head=dict(in_channels=2048),
    auxiliary_head=dict(in_channels=1024))
