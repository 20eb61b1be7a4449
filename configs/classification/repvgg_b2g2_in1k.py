# RepVGG-B2g2 on ImageNet-1k: the paper's 120-epoch recipe (_base_/recipe_120e.py);
# tested at 224 after resizing the shorter side to 256 (PIL bilinear), as the published
# top-1 was measured.
#   python tools/test.py configs/classification/repvgg_b2g2_in1k.py RepVGG-B2g2-train.pth
#   tools/dist_train.sh configs/classification/repvgg_b2g2_in1k.py 8
_base_ = ['./_base_/recipe_120e.py']
model = dict(backbone=dict(arch='B2g2'), head=dict(in_channels=2560))
