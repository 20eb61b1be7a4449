# RepVGG ImageNet classifier: repseg's backbone (type RepsegRepVGG: every checkpoint
# layout and exact fusion) in mmpretrain's ImageClassifier with a global-average-pool neck
# and a linear head, plain cross-entropy. Pixels are normalized with the ImageNet mean/std
# (RGB, 0-255 scale) by mmpretrain's data preprocessor.
custom_imports = dict(imports=['repseg.classification.model'], allow_failed_imports=False)
model = dict(
    type='ImageClassifier',
    backbone=dict(type='RepsegRepVGG', arch='A0', out_indices=(3, ), dilation=None),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=1280,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        topk=(1, 5)))
data_preprocessor = dict(
    num_classes=1000,
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True)  # images are decoded as BGR, as mmcv loads them
