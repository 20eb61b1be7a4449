# The toy-city demo model on GPUs: 512x1024 frames and crops, SyncBN (kept as SyncBN when
# started by torchrun, even on one GPU), 4 images per GPU, 100 iterations. tools/gpu_check.sh
# trains it with `tools/dist_train.sh CONFIG 1 --amp` on a toy city drawn at 512x1024:
#   python tools/make_toy_cityscapes.py data/toy_city_512x1024 --train 16 --val 4 --size 512 1024
_base_ = ['./pspnet_repvgg_a0_toycity.py']
data_root = 'data/toy_city_512x1024/'
crop_size = (512, 1024)
frame_scale = (1024, 512)  # (W, H) of the frames
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(norm_cfg=norm_cfg),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=frame_scale, ratio_range=(1.0, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4, num_workers=4,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader

max_iters = 100
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, begin=0, end=10, by_epoch=False),
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=10, end=max_iters, by_epoch=False),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=50, max_keep_ckpts=2))
