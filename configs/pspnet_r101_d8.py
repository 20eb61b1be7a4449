# Baseline: mmseg's PSPNet on ResNetV1c-101-D8, same data, crop and schedule as RepVGG.
_base_ = './pspnet_r50_d8.py'
model = dict(pretrained='open-mmlab://resnet101_v1c', backbone=dict(depth=101))
