# A small PSPNet on RepVGG-A0, trained from scratch on the synthetic toy city in minutes on
# a CPU (tools/demo.py; draw the data with `python tools/make_toy_cityscapes.py
# data/toy_city`). Same structure as the paper's models (dilated backbone, output stride
# 8, pyramid pooling, auxiliary head), scaled to 2 CPU cores: BN instead of SyncBN, no
# ImageNet weights, 128x128 crops of the 128x256 frames, a narrow head, a short schedule
# with a high learning rate, and whole-frame testing at the native size.
_base_ = [
    '../_base_/models/pspnet_repvgg.py', '../_base_/datasets/cityscapes.py',
    '../_base_/default_runtime.py', '../_base_/schedules/poly_40e.py'
]
data_root = 'data/toy_city/'
crop_size = (128, 128)
frame_scale = (256, 128)  # (W, H) of the toy city frames
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(arch='A0', dilation='full', norm_cfg=norm_cfg, init_cfg=None),
    decode_head=dict(in_channels=1280, channels=64, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=192, channels=32, norm_cfg=norm_cfg),
    test_cfg=dict(_delete_=True, mode='whole'))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=frame_scale, ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=8, num_workers=2,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=1,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 300
optimizer = dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4)
optim_wrapper = dict(optimizer=optimizer)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, begin=0, end=20, by_epoch=False),
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=20, end=max_iters, by_epoch=False),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=100, max_keep_ckpts=2, save_best=None))
randomness = dict(seed=0)
