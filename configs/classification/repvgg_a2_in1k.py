# RepVGG-A2 on ImageNet-1k: the paper's 120-epoch recipe (_base_/recipe_120e.py);
# tested at 224 after resizing the shorter side to 256 (PIL bilinear), as the published
# top-1 was measured.
#   python tools/test.py configs/classification/repvgg_a2_in1k.py RepVGG-A2-train.pth
#   tools/dist_train.sh configs/classification/repvgg_a2_in1k.py 8
_base_ = ['./_base_/recipe_120e.py']
model = dict(backbone=dict(arch='A2'), head=dict(in_channels=1408))
