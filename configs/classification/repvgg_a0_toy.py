# RepVGG-A0 trained from scratch on the synthetic toy ImageNet in about a minute on a CPU
# (tools/demo.py; draw the data with `python tools/make_toy_imagenet.py data/toy_imagenet`).
# The ImageNet recipe scaled down: 10 classes, 80x80 images tested as ImageNet is (shorter
# side to 64 in PIL, centre crop 56: timm's crop_pct 0.875), random 56 crops of at least
# half the image for training, batch 32, lr 0.02 with a 10-iteration warm-up, then a
# short cosine schedule.
_base_ = ['./_base_/recipe_120e.py']
data_root = 'data/toy_imagenet'
num_classes = 10
max_epochs = 8
model = dict(backbone=dict(arch='A0', init_cfg=None),
             head=dict(num_classes=num_classes, in_channels=1280))
data_preprocessor = dict(num_classes=num_classes)
dataset_type = 'CustomDataset'
test_size, test_resize = 56, 64
train_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow'),
    dict(type='RandomResizedCrop', scale=test_size, crop_ratio_range=(0.5, 1.0),
         backend='pillow'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow'),
    dict(type='ResizeEdge', scale=test_resize, edge='short', backend='pillow',
         interpolation='bilinear'),
    dict(type='CenterCrop', crop_size=test_size),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=32, num_workers=1,
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=25, num_workers=1,
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=0.02))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=10),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=0.0, by_epoch=True, begin=0,
         end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_epochs))
randomness = dict(seed=0)
