# PSPNet, RepVGG-B1g2 backbone, "full" dilation: paper Table 8 (78.70 mIoU).
_base_ = './pspnet_repvgg_b2.py'
model = dict(
    backbone=dict(
        arch='B1g2',
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/RepVGG-B1g2-train.pth')),
    decode_head=dict(in_channels=2048),
    auxiliary_head=dict(in_channels=512))
