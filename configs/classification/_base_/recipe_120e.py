# The paper's 120-epoch recipe (A0-A2, B0-B2 and their g2/g4 variants; the authors'
# train.py reproduced A0 72.44, B1 78.38): global batch 256 (8 GPUs x 32), SGD lr 0.1,
# momentum 0.9, weight decay 1e-4 on weights only (none on biases and BN parameters),
# cosine annealing to 0 stepped every iteration, no warm-up, RandomResizedCrop 224 +
# horizontal flip, plain cross-entropy. lr scales linearly with the global batch
# (auto_scale_lr with --cfg-options auto_scale_lr.enable=True).
_base_ = ['./repvgg_model.py', './imagenet.py', './runtime.py']
max_epochs = 120
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0))
param_scheduler = dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=0.0, by_epoch=True,
                       begin=0, end=max_epochs, convert_to_iter_based=True)
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=256, enable=False)
