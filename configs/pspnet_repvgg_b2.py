# PSPNet, RepVGG-B2 backbone, "full" dilation: paper Table 8 (80.57 mIoU).
# 8 GPUs x 2 images, 7,440 iterations: tools/dist_train.sh configs/pspnet_repvgg_b2.py 8
_base_ = [
    '_base_/models/pspnet_repvgg.py', '_base_/datasets/cityscapes.py',
    '_base_/default_runtime.py', '_base_/schedules/poly_40e.py'
]
