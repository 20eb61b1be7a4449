# Fine-tune an ImageNet RepVGG on your own class folders (any number of classes):
#   data/my_set/train/<class>/*.jpg and data/my_set/val/<class>/*.jpg
# The ImageNet weights load into the backbone (any layout repseg reads: the authors'
# RepVGG-B1-train.pth, timm/repvgg_b1.rvgg_in1k, an mmpretrain URL); the head is new.
#   python tools/train.py configs/classification/repvgg_finetune.py --cfg-options \
#     train_dataloader.dataset.data_root=data/my_set \
#     val_dataloader.dataset.data_root=data/my_set \
#     model.head.num_classes=5 data_preprocessor.num_classes=5 \
#     model.backbone.init_cfg.checkpoint=timm/repvgg_b1.rvgg_in1k
# (the pre-flight checks that the class folders match the head). For another arch set
# model.backbone.arch and model.head.in_channels (A0/A1/B0 1280, A2 1408, B1* 2048,
# B2*/B3*/D2se 2560) with the matching checkpoint.
_base_ = ['./_base_/recipe_120e.py']
data_root = 'data/my_set'
num_classes = 2
max_epochs = 30
model = dict(
    backbone=dict(arch='B1', init_cfg=dict(type='Pretrained',
                                           checkpoint='timm/repvgg_b1.rvgg_in1k')),
    head=dict(num_classes=num_classes, in_channels=2048,
              topk=(1, )))
dataset_type = 'CustomDataset'
train_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root))
val_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ), thrs=None)
test_evaluator = val_evaluator
optim_wrapper = dict(optimizer=dict(lr=0.01))
param_scheduler = dict(T_max=max_epochs, end=max_epochs)
train_cfg = dict(max_epochs=max_epochs)
