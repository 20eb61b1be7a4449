# PSPNet, RepVGG-B1g2 backbone, "fast" dilation: paper Table 8 (78.88 mIoU).
_base_ = './pspnet_repvgg_b1g2.py'
model = dict(backbone=dict(dilation='fast'))
