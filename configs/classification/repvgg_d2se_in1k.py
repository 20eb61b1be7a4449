# RepVGG-D2se on ImageNet-1k, tested at 320 with crop 1.0 (Resize 320 + CenterCrop 320,
# PIL bilinear): the authors' 83.55 top-1 (mmpretrain tests it at 224 only: 81.81).
# Trained with mmpretrain's D2se schedule: 300 epochs, label smoothing, mixup,
# AutoAugment, 5 warm-up epochs, cosine to 1e-6.
#   python tools/test.py configs/classification/repvgg_d2se_in1k.py RepVGG-D2se-train.pth
_base_ = ['./_base_/recipe_200e.py']
model = dict(backbone=dict(arch='D2se'), head=dict(in_channels=2560))
max_epochs, warmup_epochs = 300, 5
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=1e-6,
         by_epoch=True, begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs)
test_size = 320
test_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow'),
    dict(type='ResizeEdge', scale=test_size, edge='short', backend='pillow',
         interpolation='bilinear'),
    dict(type='CenterCrop', crop_size=test_size),
    dict(type='PackInputs'),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
