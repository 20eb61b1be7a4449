# The 200-epoch recipe (B2g4, B3, B3g4 in mmpretrain's configs): the 120-epoch one plus
# label smoothing 0.1, mixup 0.2, AutoAugment and 5 linear warm-up epochs before the
# cosine (all from mmpretrain: LabelSmoothLoss, Mixup, AutoAugment).
_base_ = ['./recipe_120e.py']
max_epochs = 200
warmup_epochs = 5
model = dict(
    head=dict(loss=dict(_delete_=True, type='LabelSmoothLoss', label_smooth_val=0.1,
                        mode='original', loss_weight=1.0)),
    train_cfg=dict(augments=dict(type='Mixup', alpha=0.2)))
bgr_mean = [103.53, 116.28, 123.675]
train_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow'),
    dict(type='RandomResizedCrop', scale=224, backend='pillow'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='AutoAugment', policies='imagenet',
         hparams=dict(pad_val=[round(x) for x in bgr_mean])),
    dict(type='PackInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=0.0,
         by_epoch=True, begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs)
