# ImageNet-1k through mmpretrain's ImageNet dataset. Two val layouts work:
# class folders, val/n01440764/*.JPEG (the RepVGG authors' and timm's; the default here),
# or mmpretrain's list meta/val.txt (`path label` per line, relative to val/):
#   --cfg-options test_dataloader.dataset.ann_file=meta/val.txt
# Evaluation preprocessing is the one the published top-1 numbers used: decode in PIL,
# shorter side to 256 (PIL bilinear), centre crop 224 (timm's crop_pct 0.875,
# mmpretrain's ResizeEdge(256) + CenterCrop(224)). cv2 resizing would move top-1 by up
# to about a point.
dataset_type = 'ImageNet'
data_root = 'data/imagenet'
test_size, test_resize = 224, 256
train_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow'),
    dict(type='RandomResizedCrop', scale=224, backend='pillow'),
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
    batch_size=32,
    num_workers=8,
    persistent_workers=True,
    dataset=dict(type=dataset_type, data_root=data_root, data_prefix='train', ann_file='',
                 pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True))
val_dataloader = dict(
    batch_size=32,
    num_workers=8,
    persistent_workers=True,
    dataset=dict(type=dataset_type, data_root=data_root, data_prefix='val', ann_file='',
                 pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False))
# thrs=None: top-5 counts the label among the 5 best scores even where softmax rounds some
# to 0 in float32 (mmpretrain's default thrs=0. would not: a confident model then loses
# top-5 hits that timm's and the authors' counts keep).
val_evaluator = dict(type='Accuracy', topk=(1, 5), thrs=None)
test_dataloader = val_dataloader
test_evaluator = val_evaluator
