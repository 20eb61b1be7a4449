"""User errors are caught before training or testing starts, with messages that say what
is wrong and what to do; the tools exit with status 2 and no traceback."""
import re
from pathlib import Path

import cv2
import pytest
import torch

from repseg.mmseg.builder import build_segmentor, load_config
from repseg.cli import USER_ERRORS
from repseg.mmseg.runner import PreflightError, prepare_config, preflight, run_test
from tiny_models import load_tool

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / 'configs/demo/pspnet_repvgg_a0_toycity.py'
TRAIN_IDS = 'gtFine/train/toycity/toycity_000000_000001_gtFine_labelTrainIds.png'
IMAGE = 'leftImg8bit/train/toycity/toycity_000000_000001_leftImg8bit.png'


def data_options(root):
    return {f'{loader}.dataset.data_root': str(root)
            for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')}


def preflight_message(root, mode='train', **options) -> str:
    cfg = prepare_config(DEMO_CONFIG, {**data_options(root), **options})
    with pytest.raises(PreflightError) as error:
        preflight(cfg, mode, 'demo.py')
    return str(error.value)


@pytest.fixture
def toy(city_copy, tmp_path):
    """A fresh copy of a small toy city to break."""
    return city_copy(tmp_path)


def test_valid_toy_city_passes(toy):
    preflight(prepare_config(DEMO_CONFIG, data_options(toy)), 'train')
    preflight(prepare_config(DEMO_CONFIG, data_options(toy)), 'test')


def test_missing_data_root_explains_cityscapes_and_toy_city(tmp_path):
    message = preflight_message(tmp_path / 'cityscapes')
    assert f"data root '{tmp_path / 'cityscapes'}' does not exist" in message
    assert 'prepare_cityscapes.py' in message and 'data/README.md' in message
    assert 'make_toy_cityscapes.py data/toy_city' in message
    assert 'configs/demo/pspnet_repvgg_a0_toycity.py' in message
    assert ('set in demo.py as train_dataloader.dataset.data_root, '
            'val_dataloader.dataset.data_root') in message
    assert message.count('does not exist') == 1  # one paragraph for the shared root


def test_image_without_label(toy):
    (toy / TRAIN_IDS).unlink()
    message = preflight_message(toy)
    assert '1 of 4 images have no label' in message and 'toycity_000000_000001' in message
    assert 'has not' in message or 'have not been built' in message  # labelIds exist beside it


def test_label_values_outside_the_train_ids(toy):
    labels = cv2.imread(str(toy / TRAIN_IDS), cv2.IMREAD_UNCHANGED)
    labels[:4, :4] = 40
    labels[4:8, :4] = 19
    cv2.imwrite(str(toy / TRAIN_IDS), labels)
    message = preflight_message(toy)
    assert 'holds values [19, 40] outside 0..18 and the ignore index 255' in message


def test_corrupt_png(toy):
    data = (toy / IMAGE).read_bytes()
    (toy / IMAGE).write_bytes(data[:len(data) // 4])
    message = preflight_message(toy)
    assert 'cannot read image' in message and 'corrupt or truncated' in message
    assert 'toycity_000000_000001_leftImg8bit.png' in message


def test_empty_image_folder(toy):
    for image in (toy / 'leftImg8bit/val/toycity').iterdir():
        image.unlink()
    message = preflight_message(toy)
    assert "no images '*_leftImg8bit.png' found under" in message
    assert 'val_dataloader.dataset' in message


def override_message(root, **options) -> str:
    """The message of the overrides refused as ``prepare_config`` applies them."""
    with pytest.raises(USER_ERRORS) as error:
        prepare_config(DEMO_CONFIG, {**data_options(root), **options})
    return str(error.value)


def test_misspelt_backbone_argument(toy):
    message = override_message(toy, **{'model.backbone.archh': 'B2'})
    assert ("--cfg-options key model.backbone.archh: RepVGG has no argument 'archh'; "
            "did you mean 'arch'?") in message


def test_unknown_arch(toy):
    message = override_message(toy, **{'model.backbone.arch': 'B5'})
    assert "--cfg-options key model.backbone.arch: unknown RepVGG arch 'B5'; choose from A0, A1" in message


def test_misspelt_keys_outside_the_model(toy):
    with pytest.raises(USER_ERRORS, match="did you mean 'train_cfg'"):
        prepare_config(DEMO_CONFIG, {'train_cfgg.max_iters': 10})
    message = override_message(toy, **{'train_cfg.max_iter': 10,
                                       'default_hooks.logger.intervall': 5})
    assert ("train_cfg.max_iter: IterBasedTrainLoop has no argument 'max_iter'; did you mean "
            "'max_iters'") in message
    assert "default_hooks.logger.intervall: LoggerHook has no argument 'intervall'" in message


def test_missing_pretrained_weights_explain_download(toy):
    weights = toy / 'RepVGG-B2-train.pth'
    cfg = prepare_config(ROOT / 'configs/pspnet_repvgg_b2.py', {
        **data_options(toy), 'model.backbone.init_cfg.checkpoint': str(weights)})
    with pytest.raises(PreflightError) as error:
        preflight(cfg, 'train')
    message = str(error.value)
    assert ('model.backbone.init_cfg: pretrained backbone checkpoint not found: '
            f'{weights}') in message
    assert 'github.com/DingXiaoH/RepVGG' in message
    assert 'init_cfg=None' in message
    preflight(cfg, 'test')  # testing needs no ImageNet weights


def test_checkpoint_of_another_arch(toy, tmp_path):
    cfg = load_config(DEMO_CONFIG, {'model.backbone.arch': 'A1',
                                    'model.auxiliary_head.in_channels': 256})
    torch.save({'state_dict': build_segmentor(cfg).state_dict()}, tmp_path / 'a1.pth')
    with pytest.raises(USER_ERRORS) as error:
        run_test(DEMO_CONFIG, tmp_path / 'a1.pth', work_dir=str(tmp_path / 'work'),
             cfg_options=data_options(toy))
    message = str(error.value)
    assert 'does not fit the RepVGG-A0 backbone' in message
    assert 'looks like RepVGG-A1' in message


def test_cli_train_without_cityscapes_exits_2_with_help(tmp_path, monkeypatch, capsys):
    """The paper config on a machine without data/cityscapes (run from an empty folder;
    in-process: the tool convention's subprocess path is tested in test_cli.py)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        load_tool('train').main([str(ROOT / 'configs/pspnet_repvgg_b2.py')])
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2, stderr[-3000:]
    assert 'Traceback' not in stderr
    assert re.search(r"error: data root 'data/cityscapes/?' does not exist", stderr)
    assert 'Download Cityscapes' in stderr and 'prepare_cityscapes.py' in stderr
    assert 'make_toy_cityscapes.py' in stderr
    assert 'RepVGG-B2-train.pth' in stderr  # the missing ImageNet weights, too
    assert not (tmp_path / 'work_dirs').exists()


