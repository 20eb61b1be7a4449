# PSPNet, RepVGG-B2 backbone, "fast" dilation (only the last 5 layers): Table 8 (79.52).
_base_ = './pspnet_repvgg_b2.py'
model = dict(backbone=dict(dilation='fast'))
