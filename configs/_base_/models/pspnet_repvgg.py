# PSPNet on a dilated RepVGG backbone (paper section 4.3): output stride 8, pyramid
# pooling (bins 1, 2, 3, 6) on the last stage, auxiliary FCN head (weight 0.4) on stage 3.
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=(713, 713))
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='RepVGG',
        arch='B2',
        out_indices=(0, 1, 2, 3),
        dilation='full',
        norm_cfg=norm_cfg,
        norm_eval=False,
        deploy=False,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/RepVGG-B2-train.pth')),
    decode_head=dict(
        type='PSPHead',
        in_channels=2560,
        in_index=3,
        channels=512,
        pool_scales=(1, 2, 3, 6),
        dropout_ratio=0.1,
        num_classes=19,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=640,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=19,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=(713, 713), stride=(476, 476)))
