"""Classification end to end against independent references: timm's own RepVGG and
transforms (top-1/top-5 image by image, classify.py's top-5), torchvision's PIL resize
and crop, mmpretrain's own RepVGG for a grouped arch timm lacks; and the bad inputs.

One toy set (30 val images) and one model trained for a few dozen iterations by
``tools/train.py`` serve the whole module."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import repseg
from repseg.checkpoint import export_state_dict
from repseg.data.toy_imagenet import CLASSES, make_toy_imagenet

timm = pytest.importorskip('timm')
pytest.importorskip('mmpretrain')
from repseg.classification import model as cls_model  # noqa: E402
from repseg.classification import runner  # noqa: E402
from repseg.classification.predict import classify  # noqa: E402
from repseg.mmseg.preflight import PreflightError  # noqa: E402
from tiny_models import load_tool  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOY_CONFIG = ROOT / 'configs/classification/repvgg_a0_toy.py'
A0_CONFIG = ROOT / 'configs/classification/repvgg_a0_in1k.py'
D2SE_CONFIG = ROOT / 'configs/classification/repvgg_d2se_in1k.py'
CROP = 56  # the toy config's test crop (resize 64: crop_pct 0.875)

pytestmark = pytest.mark.usefixtures('single_thread')


def data_roots(root, loaders=('train', 'val', 'test')):
    return [f'{name}_dataloader.dataset.data_root={root}' for name in loaders]


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp('toy_imagenet')
    make_toy_imagenet(root, num_train=4, num_val=3, size=64)
    return root


@pytest.fixture(scope='module')
def trained(toy, tmp_path_factory):
    """A0 trained by tools/train.py (in this process) for 20 iterations on the toy set."""
    work = tmp_path_factory.mktemp('cls_train')
    load_tool('train').main([str(TOY_CONFIG), '--work-dir', str(work), '--cfg-options',
                        *data_roots(toy, ('train', 'val')), 'train_cfg.max_epochs=2',
                        'train_dataloader.batch_size=4', 'train_dataloader.num_workers=0',
                        'optim_wrapper.optimizer.lr=0.01',
                        'val_dataloader.num_workers=0', 'train_cfg.val_interval=2',
                        'default_hooks.checkpoint.interval=2'])
    checkpoint = work / 'epoch_2.pth'
    assert checkpoint.is_file()
    return checkpoint


def timm_model(checkpoint, num_classes=10):
    """timm's own RepVGG-A0 with the checkpoint's weights, converted by repseg to timm's
    layout (the state dict keeps the classifier)."""
    state, _ = cls_model.read_classifier_state(checkpoint)
    renamed, _ = cls_model.to_repseg_keys(state, cls_model.detect_layout(state))
    model = timm.create_model('repvgg_a0', pretrained=False, num_classes=num_classes)
    model.load_state_dict(export_state_dict(renamed, 'timm'), strict=True)
    return model.eval()


def timm_topk(model, paths, input_size, k=5):
    """timm's own preprocessing (resolve_data_config + create_transform) and model."""
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config({'input_size': (3, input_size, input_size),
                                  'crop_pct': 0.875, 'interpolation': 'bilinear'}, model=model)
    transform = create_transform(**config)
    batch = torch.stack([transform(Image.open(p).convert('RGB')) for p in paths])
    with torch.no_grad():
        probs = torch.softmax(model(batch), dim=1)
    return probs.topk(k, dim=1)


@pytest.fixture(scope='module')
def tested(toy, trained, tmp_path_factory):
    """tools/test.py in a fresh process, fused (the default), with --out predictions."""
    work = tmp_path_factory.mktemp('cls_test')
    subprocess.run([sys.executable, str(ROOT / 'tools/test.py'), str(TOY_CONFIG), str(trained),
                    '--work-dir', str(work), '--out', str(work / 'out'), '--cfg-options',
                    *data_roots(toy, ('test',)), 'test_dataloader.num_workers=0'],
                   check=True, cwd=ROOT, capture_output=True, text=True)
    metrics = json.loads((work / 'metrics.json').read_text())
    predictions = json.loads((work / 'out' / runner.PREDICTIONS_FILE).read_text())
    return metrics, predictions


def test_top1_top5_match_timm_image_by_image(tested, trained):
    metrics, predictions = tested
    assert metrics['fused'] is True and metrics['images'] == 30 == len(predictions)
    paths = [p['image'] for p in predictions]
    values, indices = timm_topk(timm_model(trained), paths, CROP)
    labels = [p['label'] for p in predictions]
    assert labels == [int(Path(p).parent.name[1]) for p in paths]
    for prediction, row, probs in zip(predictions, indices.tolist(), values.tolist()):
        ours = [t['index'] for t in prediction['topk']]
        assert ours[0] == row[0] or probs[0] - probs[1] < 1e-5, prediction['image']
        np.testing.assert_allclose([t['prob'] for t in prediction['topk']], probs, atol=1e-4)
    top1 = 100 * np.mean([row[0] == y for row, y in zip(indices.tolist(), labels)])
    top5 = 100 * np.mean([y in row for row, y in zip(indices.tolist(), labels)])
    assert metrics['accuracy/top1'] == pytest.approx(top1, abs=1e-3)  # 4 decimals
    assert metrics['accuracy/top5'] == pytest.approx(top5, abs=1e-3)


def test_fused_and_train_time_predict_alike(toy, trained, tested, tmp_path):
    _, fused = tested
    metrics = runner.run_test(TOY_CONFIG, trained, work_dir=str(tmp_path), out=str(tmp_path),
                              fuse=False, cfg_options=dict(
                                  a.split('=') for a in data_roots(toy, ('test',))))
    unfused = json.loads((tmp_path / runner.PREDICTIONS_FILE).read_text())
    assert json.loads((tmp_path / 'metrics.json').read_text())['fused'] is False
    assert [p['topk'][0]['index'] for p in unfused] == [p['topk'][0]['index'] for p in fused]
    np.testing.assert_allclose([[t['prob'] for t in p['topk']] for p in unfused],
                               [[t['prob'] for t in p['topk']] for p in fused], atol=1e-5)
    assert metrics['accuracy/top1'] == tested[0]['accuracy/top1']


def _photo(path, height=301, width=452):
    from repseg.data.toy_city import draw_scene

    rgb, _, _ = draw_scene(np.random.default_rng(3), height, width)
    Image.fromarray(rgb).save(path)
    return path


@pytest.mark.parametrize('config, resize, crop', [(A0_CONFIG, 256, 224),
                                                  (D2SE_CONFIG, 320, 320)])
def test_eval_crop_equals_torchvision_pil(config, resize, crop, tmp_path):
    from mmengine.dataset import Compose
    from mmpretrain.utils import register_all_modules
    from torchvision import transforms as T

    from repseg.mmseg.config_file import read_config

    register_all_modules(init_default_scope=True)
    photo = _photo(tmp_path / 'photo.png')
    pipeline = Compose(read_config(config).test_dataloader.dataset.pipeline)
    ours = pipeline(dict(img_path=str(photo)))['inputs']  # uint8 CHW, BGR
    reference = T.Compose([T.Resize(resize, interpolation=T.InterpolationMode.BILINEAR),
                           T.CenterCrop(crop), T.PILToTensor()])(Image.open(photo).convert('RGB'))
    assert ours.shape == reference.shape == (3, crop, crop)
    assert (ours.flip(0).int() - reference.int()).abs().max() <= 1


def test_classify_tool_top5_equals_timm(toy, trained, tmp_path):
    """classify.py in a fresh process (the arch guessed, the model fused) against timm's
    own model and transforms for the same weights."""
    images = sorted((toy / 'val').rglob('*.JPEG'))[::3]
    bad = tmp_path / 'broken.jpg'
    bad.write_bytes(b'not a jpeg')
    result = subprocess.run([sys.executable, str(ROOT / 'tools/classify.py'), str(trained),
                             *map(str, images), str(bad), '--input-size', str(CROP),
                             '--json', str(tmp_path / 'out.json')],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert 'RepVGG-A0 (guessed from the weights)' in result.stdout + result.stderr
    assert result.stdout.count(f'skipped {bad}') == 1
    records = json.loads((tmp_path / 'out.json').read_text())
    values, indices = timm_topk(timm_model(trained), images, CROP)
    assert values[:, 0].std() > 1e-3, 'degenerate oracle: the same scores for every image'
    assert [r['image'] for r in records] == list(map(str, images))
    for record, row, probs in zip(records, indices.tolist(), values.tolist()):
        assert [t['name'] for t in record['topk']] == [CLASSES[i] for i in row]
        np.testing.assert_allclose([t['prob'] for t in record['topk']], probs, atol=1e-4)


def test_imagenet_class_names_offline():
    from repseg.classification.predict import imagenet_class_names

    names = imagenet_class_names()
    assert len(names) == 1000 and names[0] == 'tench' and names[-1] == 'toilet tissue'


def test_grouped_arch_matches_mmpretrain(tmp_path):
    """B1g2 (timm has no g2 models): mmpretrain's own RepVGG with the same weights."""
    from conftest import _randomize_weights
    from mmpretrain.models.backbones import RepVGG as MMPretrainRepVGG
    from mmpretrain.registry import MODELS

    torch.manual_seed(0)
    backbone = _randomize_weights(MMPretrainRepVGG('B1g2', out_indices=(3,)), 5)
    backbone.eval()
    fc = torch.nn.Linear(2048, 10)
    state = {f'backbone.{k}': v for k, v in backbone.state_dict().items()}
    state.update({'head.fc.weight': fc.weight.detach(), 'head.fc.bias': fc.bias.detach()})
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = fc(backbone(x)[-1].mean(dim=(2, 3)))
    ours = MODELS.build(cls_model.classifier_config('B1g2', num_classes=10)).eval()
    report = cls_model.load_classifier_weights(ours, {'state_dict': state})
    assert report.layout == 'mmpretrain'
    with torch.no_grad():
        torch.testing.assert_close(ours(x, mode='tensor'), expected, rtol=0, atol=1e-4)
        repseg.reparameterize(ours, inplace=True)
        torch.testing.assert_close(ours(x, mode='tensor'), expected, rtol=0, atol=1e-4)


# Bad input ----------------------------------------------------------------------------------

def _copy_val(toy, tmp_path):
    root = tmp_path / 'set'
    shutil.copytree(toy / 'val', root / 'val')
    return root


def _test_options(root, **extra):
    options = dict(a.split('=') for a in data_roots(root, ('test',)))
    options.update({'test_dataloader.num_workers': 0}, **extra)
    return options


def test_gray_and_cmyk_jpegs_are_used(toy, trained, tmp_path):
    root = _copy_val(toy, tmp_path)
    source = next((root / 'val' / CLASSES[0]).iterdir())
    gray, cmyk = root / 'val' / CLASSES[0] / 'gray.jpg', root / 'val' / CLASSES[1] / 'cmyk.jpg'
    Image.open(source).convert('L').save(gray)
    Image.open(source).convert('CMYK').save(cmyk)
    assert Image.open(cmyk).mode == 'CMYK'
    metrics = runner.run_test(TOY_CONFIG, trained, work_dir=str(tmp_path / 'w'),
                              cfg_options=_test_options(root))
    assert json.loads((tmp_path / 'w/metrics.json').read_text())['images'] == 32
    assert 0 <= metrics['accuracy/top1'] <= 100
    predictions = classify(trained, [gray, cmyk], topk=3, input_size=CROP, show=False)
    assert [p.image for p in predictions] == [str(gray), str(cmyk)]


def test_undecodable_image_in_val_tree(toy, trained, tmp_path):
    root = _copy_val(toy, tmp_path)
    broken = root / 'val' / CLASSES[2] / 'broken.JPEG'
    broken.write_bytes(b'\xff\xd8 truncated')
    with pytest.raises(PreflightError, match=r'(?s)1 image\(s\) cannot be used.*broken\.JPEG'):
        runner.run_test(TOY_CONFIG, trained, work_dir=str(tmp_path / 'w'),
                        cfg_options=_test_options(root))


def test_empty_class_folder(toy, trained, tmp_path):
    root = _copy_val(toy, tmp_path)
    shutil.rmtree(root / 'val' / CLASSES[4])
    (root / 'val' / CLASSES[4]).mkdir()
    with pytest.raises(PreflightError, match=rf'hold no images.*{CLASSES[4]}'):
        runner.run_test(TOY_CONFIG, trained, work_dir=str(tmp_path / 'w'),
                        cfg_options=_test_options(root))


def test_class_folders_not_matching_head(toy, trained, tmp_path):
    with pytest.raises(PreflightError, match='has 10 class folders .* but the head has 5 '
                                             r'classes.*model\.head\.num_classes=10'):
        runner.run_test(TOY_CONFIG, trained, work_dir=str(tmp_path),
                        cfg_options=_test_options(toy, **{'model.head.num_classes': 5}))


def test_imagenet_type_on_own_class_folders_names_custom_dataset(toy, trained, tmp_path):
    """The ImageNet configs on a 10-class folder tree: mmpretrain's ImageNet type would
    assert 1000 folders inside the Runner (a traceback); the pre-flight names the fix."""
    options = _test_options(toy, **{'model.head.num_classes': 10,
                                    'data_preprocessor.num_classes': 10})
    with pytest.raises(PreflightError, match=r"type 'ImageNet'.*has 10.*"
                                             r'test_dataloader\.dataset\.type=CustomDataset'):
        runner.run_test(A0_CONFIG, trained, work_dir=str(tmp_path / 'w'), cfg_options=options)
    options['test_dataloader.dataset.type'] = 'CustomDataset'
    metrics = runner.run_test(A0_CONFIG, trained, work_dir=str(tmp_path / 'c'),
                              cfg_options=options)
    assert 0 <= metrics['accuracy/top1'] <= 100


def test_annotation_list_layout(toy, trained, tested, tmp_path):
    metrics = runner.run_test(TOY_CONFIG, trained, work_dir=str(tmp_path), cfg_options=_test_options(
        toy, **{'test_dataloader.dataset.ann_file': 'meta/val.txt'}))
    assert metrics['accuracy/top1'] == tested[0]['accuracy/top1']


def test_checkpoint_of_another_arch(toy, tmp_path):
    from repseg.checkpoint import CheckpointError

    torch.save(repseg.create_model('A1', num_classes=10).state_dict(), tmp_path / 'a1.pth')
    with pytest.raises(CheckpointError, match='looks like RepVGG-A1'):
        runner.run_test(TOY_CONFIG, tmp_path / 'a1.pth', work_dir=str(tmp_path / 'w'),
                        cfg_options=_test_options(toy))


@pytest.mark.parametrize('topk, message', [('0', '--topk must be at least 1'),
                                           ('2000', 'topk 2000 is more than the 10 classes')])
def test_topk_out_of_range(trained, toy, topk, message, capsys):
    image = next((toy / 'val' / CLASSES[0]).iterdir())
    with pytest.raises(SystemExit) as exit_info:
        load_tool('classify').main([str(trained), str(image), '--topk', topk])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_onnx_model_through_onnx_runtime(toy, trained, tested, tmp_path):
    """An exported classifier tested by ONNX Runtime predicts as the PyTorch model."""
    pytest.importorskip('onnxruntime')
    from mmpretrain.registry import MODELS

    from repseg.mmseg.config_file import read_config

    cfg = read_config(TOY_CONFIG)
    model_cfg = cfg.model.to_dict()
    model_cfg['data_preprocessor'] = cfg.data_preprocessor.to_dict()
    model = MODELS.build(model_cfg)
    cls_model.load_classifier_weights(model, trained)
    runner.export_classifier_onnx(model.eval(), tmp_path / 'toy.onnx', size=CROP)
    metrics = runner.run_test(TOY_CONFIG, tmp_path / 'toy.onnx', work_dir=str(tmp_path),
                              out=str(tmp_path), cfg_options=_test_options(toy))
    record = json.loads((tmp_path / 'metrics.json').read_text())
    assert record['backend'] == 'onnxruntime'
    onnx_top = [p['topk'][0]['index'] for p in json.loads(
        (tmp_path / runner.PREDICTIONS_FILE).read_text())]
    assert onnx_top == [p['topk'][0]['index'] for p in tested[1]]
    assert metrics['accuracy/top1'] == tested[0]['accuracy/top1']


def test_cfg_options_typo_checked_against_mmpretrain(toy, tmp_path):
    from repseg.mmseg.config_file import ConfigKeyError

    with pytest.raises(ConfigKeyError, match="LinearClsHead has no argument 'num_clases'.*"
                                             "'num_classes'"):
        runner.run_train(TOY_CONFIG, work_dir=str(tmp_path), cfg_options={
            'model.head.num_clases': 10, **dict(a.split('=') for a in data_roots(toy))})


def test_missing_mmpretrain_names_the_extra(monkeypatch):
    from repseg.classification import MissingExtraError, require_mmpretrain

    monkeypatch.setitem(sys.modules, 'mmpretrain', None)
    with pytest.raises(MissingExtraError, match=r"pip install 'repseg\[cls\]'"):
        require_mmpretrain()
