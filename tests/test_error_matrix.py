"""The error matrix: bad inputs and faults for every tool and the Python API.

Each case runs a tool's ``main(argv)`` in-process (or calls the API) and asserts the exit
status (the exception type for the API), a phrase of the message, and that no input
file changed: every file of the shared workspace and of the case's own folder is
fingerprinted before and after. ``tests/test_cli.py`` runs a few of the same failures
as real subprocesses (exit status, no traceback, ``--help`` speed).
"""
from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch

import repseg
from repseg.checkpoint import CheckpointError, CheckpointMismatchError
from repseg.checkpoint.convert import convert_checkpoint
from repseg.cli import USER_ERRORS
from repseg.data.toy_city import make_toy_cityscapes
from repseg.mmseg.builder import build_segmentor, load_config
from repseg.mmseg.deploy import deploy_segmentor
from repseg.segment import segment
from tiny_models import load_tool

pytestmark = pytest.mark.usefixtures('single_thread')

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / 'configs' / 'demo' / 'pspnet_repvgg_a0_toycity.py'
NARROW = {'model.decode_head.channels': 16, 'model.auxiliary_head.channels': 8}
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without CUDA')
TOOLS = {}


class Pickled:
    """A class that ``weights_only`` loading refuses to unpickle."""


@pytest.fixture(scope='session')
def ws(tmp_path_factory):
    """The shared, read-only inputs of every case: a small toy city, a narrow demo config,
    its train-time checkpoint and fused pair, a classifier checkpoint and broken files."""
    root = tmp_path_factory.mktemp('matrix')
    make_toy_cityscapes(root / 'toy', num_train=2, num_val=2, size=(64, 128), seed=2)
    cfg = load_config(DEMO_CONFIG, NARROW)
    cfg.dump(str(root / 'narrow.py'))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_segmentor(cfg)
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, root / 'seg.pth')
    nan_state = {k: v.float().fill_(float('nan')) if v.is_floating_point() else v
                 for k, v in model.state_dict().items()}
    torch.save({'state_dict': nan_state}, root / 'nan.pth')
    int8_state = {k: v.to(torch.int8) if v.is_floating_point() else v
                  for k, v in model.state_dict().items()}
    torch.save({'state_dict': int8_state}, root / 'int8.pth')
    deploy_segmentor(root / 'narrow.py', root / 'seg.pth', root / 'fused', verify_shape=None)
    torch.save(repseg.create_model('A0', num_classes=5).state_dict(), root / 'a0.pth')
    a0_state = torch.load(root / 'a0.pth', weights_only=True)
    inf_state = dict(a0_state, **{'stem.conv3x3.conv.weight': torch.full((48, 3, 3, 3), float('inf'))})
    torch.save(inf_state, root / 'a0_inf.pth')
    torch.save({k: v.to(torch.int8) if v.is_floating_point() else v
                for k, v in a0_state.items()}, root / 'a0_int8.pth')
    (root / 'text.pth').write_text('hello world\n')
    (root / 'empty.pth').write_bytes(b'')
    (root / 'page.pth').write_text('<!DOCTYPE html>\n<html><body>Not Found</body></html>\n')
    (root / 'cut.pth').write_bytes((root / 'a0.pth').read_bytes()[:5000])
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'extra': Pickled()}, root / 'pickled.pth')
    (root / 'folder.pth').mkdir()
    (root / 'notes.txt').write_text('not an image\n')
    (root / 'empty_dir').mkdir()
    return root


_DIGESTS: dict = {}


def fingerprint(*folders: Path) -> dict:
    """``{path: (size, mtime, sha256)}`` of every file below ``folders`` (symlinks as
    links). A digest is computed once per (path, size, mtime, inode): any write to a
    file changes its mtime, so an unchanged stat means unchanged bytes."""
    prints = {}
    for folder in folders:
        for path in sorted(folder.rglob('*')):
            if path.is_symlink():
                prints[str(path)] = ('link', os.readlink(path))
            elif path.is_file():
                stat = path.stat()
                key = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
                if key not in _DIGESTS:
                    _DIGESTS[key] = hashlib.sha256(path.read_bytes()).hexdigest()
                prints[str(path)] = (stat.st_size, stat.st_mtime_ns, _DIGESTS[key])
    return prints


@pytest.fixture(scope='session')
def ws_print(ws):
    return fingerprint(ws)


# Cases -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """``tool`` run with ``argv`` (``{ws}``, ``{toy}``, ``{tmp}``, ``{data}`` filled in)
    exits with ``status`` and prints ``phrase``; ``prepare(ws, tmp)`` makes the case's own
    inputs in ``tmp``; ``fault(monkeypatch)`` breaks something inside the run."""

    id: str
    tool: str
    argv: str
    status: int
    phrase: str
    prepare: Optional[Callable] = None
    fault: Optional[Callable] = None
    marks: tuple = ()


def data_options(toy) -> str:
    return ' '.join(f'{loader}.dataset.data_root={toy}'
                    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'))


def link_to_source(ws, tmp):
    (tmp / 'link.pth').symlink_to(ws / 'a0.pth')


def existing_file(name):
    def prepare(ws, tmp):
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(b'earlier output')
    return prepare


def earlier_deploy(ws, tmp):
    shutil.copytree(ws / 'fused', tmp / 'out')


def earlier_predictions(ws, tmp):
    (tmp / 'out').mkdir()
    (tmp / 'out' / 'toycity_000001_000000_labelIds.png').write_bytes(b'earlier prediction')


def earlier_overlays(ws, tmp):
    out = tmp / 'out'
    out.mkdir()
    (out / 'a_mask.png').write_bytes(b'earlier output')
    shutil.copy(ws / 'toy/leftImg8bit/val/toycity/toycity_000001_000000_leftImg8bit.png',
                tmp / 'a.png')


def images_beside_outputs(ws, tmp):
    """A folder holding an image and the outputs of an earlier run on it."""
    shutil.copy(ws / 'toy/leftImg8bit/val/toycity/toycity_000001_000000_leftImg8bit.png',
                tmp / 'a.png')
    (tmp / 'a_mask.png').write_bytes((tmp / 'a.png').read_bytes())


def corrupt_images(ws, tmp):
    (tmp / 'in').mkdir()
    for name in ('a.png', 'b.jpg'):
        (tmp / 'in' / name).write_bytes(b'\x89PNG not really')


def checkpoint_named_like_the_output(ws, tmp):
    shutil.copy(ws / 'seg.pth', tmp / 'narrow_deploy.pth')


def cityscapes_without_labels(ws, tmp):
    (tmp / 'cs' / 'leftImg8bit' / 'val').mkdir(parents=True)


def fail_save(monkeypatch):
    def save(obj, path, *args, **kwargs):
        Path(path).write_bytes(b'half a checkpoint')
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(torch, 'save', save)


def interrupt_save(monkeypatch):
    def save(obj, path, *args, **kwargs):
        Path(path).write_bytes(b'half a checkpoint')
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, 'save', save)


def fused_output_differs(monkeypatch):
    monkeypatch.setattr('repseg.mmseg.deploy.compare_outputs', lambda *args: (2.0, 0.5))


def onnx_output_differs(monkeypatch):
    from repseg import export

    monkeypatch.setattr(export.OnnxCheck, 'passed', property(lambda self: False))


def interrupt_inference(monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr('repseg.segment.load_segmentor', interrupted)


SEG = '{ws}/narrow.py {ws}/seg.pth'
FUSED = '{ws}/fused/narrow_deploy.py {ws}/fused/narrow_deploy.pth'
VAL = '{toy}/leftImg8bit/val'
TINY_EXPORT = '--shape 32 32'

CASES = [
    # train
    Case('train-config-missing', 'train', '{ws}/nope.py', 2, 'config file not found'),
    Case('train-work-dir-below-a-file', 'train', '{ws}/narrow.py --work-dir {ws}/notes.txt/run',
         2, "'{ws}/notes.txt' is a file, not a folder"),
    Case('train-cfg-option-without-value', 'train', '{ws}/narrow.py --cfg-options max_iters',
         2, "--cfg-options 'max_iters': expected KEY=VALUE"),
    Case('train-cfg-option-unbalanced', 'train', '{ws}/narrow.py --cfg-options a=[1,2',
         2, 'cannot parse the value'),
    Case('train-cfg-option-typo', 'train', '{ws}/narrow.py --cfg-options train_cfgg.max_iters=2',
         2, "did you mean 'train_cfg'"),
    Case('train-unknown-arch', 'train',
         '{ws}/narrow.py --cfg-options {data} model.backbone.arch=B5',
         2, "unknown RepVGG arch 'B5'"),
    Case('train-missing-data-root', 'train', '{ws}/narrow.py --cfg-options '
         'train_dataloader.dataset.data_root={tmp}/nowhere', 2, "'{tmp}/nowhere' does not exist"),
    Case('train-amp-without-cuda', 'train', '{ws}/narrow.py --amp --cfg-options {data}', 2,
         '--amp needs a CUDA GPU', marks=(NO_CUDA,)),
    Case('train-launcher-without-torchrun', 'train',
         '{ws}/narrow.py --launcher pytorch --cfg-options {data}', 2, 'tools/dist_train.sh',
         marks=(NO_CUDA,)),
    Case('train-unknown-launcher', 'train', '{ws}/narrow.py --launcher mpi', 2,
         "invalid choice: 'mpi'"),
    # test
    Case('test-checkpoint-missing', 'test', '{ws}/narrow.py {ws}/missing.pth', 2,
         'checkpoint file not found'),
    Case('test-text-renamed-pth', 'test', '{ws}/narrow.py {ws}/text.pth', 2,
         "not a PyTorch checkpoint but a text file starting 'hello world'"),
    Case('test-empty-checkpoint', 'test', '{ws}/narrow.py {ws}/empty.pth', 2, 'empty (0 bytes)'),
    Case('test-html-checkpoint', 'test', '{ws}/narrow.py {ws}/page.pth', 2, 'an HTML page'),
    Case('test-truncated-checkpoint', 'test', '{ws}/narrow.py {ws}/cut.pth', 2, 'truncated'),
    Case('test-pickled-objects', 'test', '{ws}/narrow.py {ws}/pickled.pth', 2,
         'holds Python objects besides tensors (e.g. test_error_matrix.Pickled)'),
    Case('test-checkpoint-is-a-folder', 'test', '{ws}/narrow.py {ws}/folder.pth', 2,
         'it is a folder'),
    Case('test-classifier-checkpoint', 'test', '{ws}/narrow.py {ws}/a0.pth --cfg-options {data}',
         2, 'holds no backbone weights'),
    Case('test-fused-with-training-config', 'test',
         '{ws}/narrow.py {ws}/fused/narrow_deploy.pth --cfg-options {data}', 2, '_deploy.py'),
    Case('test-out-holds-earlier-predictions', 'test', SEG + ' --out {tmp}/out', 2,
         '1 output already exists: {tmp}/out/toycity_000001_000000_labelIds.png',
         prepare=earlier_predictions),
    Case('test-out-below-a-file', 'test', SEG + ' --out {ws}/notes.txt/out', 2, 'is a file'),
    Case('test-work-dir-is-a-file', 'test', SEG + ' --work-dir {ws}/notes.txt', 2,
         "work dir '{ws}/notes.txt' is a file"),
    Case('test-nan-checkpoint', 'test', '{ws}/narrow.py {ws}/nan.pth --work-dir {tmp}/work '
         '--cfg-options {data}', 2, "checkpoint '{ws}/nan.pth' holds NaN or Inf in"),
    Case('test-int8-checkpoint', 'test', '{ws}/narrow.py {ws}/int8.pth --work-dir {tmp}/work '
         '--cfg-options {data}', 2, "checkpoint '{ws}/int8.pth' holds integer tensors where "
         'the model has floating-point weights: backbone.stem.conv3x3.conv.weight (int8)'),
    # infer
    Case('infer-input-missing', 'infer', SEG + ' {tmp}/nope.png --out-dir {tmp}/out', 2,
         'input not found'),
    Case('infer-empty-folder', 'infer', SEG + ' {ws}/empty_dir --out-dir {tmp}/out', 2,
         'no images or videos found'),
    Case('infer-all-inputs-corrupt', 'infer', SEG + ' {tmp}/in --out-dir {tmp}/out --no-progress',
         2, 'none of the 2 inputs could be decoded', prepare=corrupt_images),
    Case('infer-cuda-without-cuda', 'infer', SEG + f' {VAL} --device cuda --out-dir {{tmp}}/out',
         2, 'CUDA is not available on this machine', marks=(NO_CUDA,)),
    Case('infer-fp16-and-bf16', 'infer', SEG + f' {VAL} --fp16 --bf16 --out-dir {{tmp}}/out', 2,
         '--fp16 and --bf16 exclude each other'),
    Case('test-fp16-and-bf16', 'test', SEG + ' --fp16 --bf16', 2,
         '--fp16 and --bf16 exclude each other'),
    Case('infer-unknown-device', 'infer', SEG + f' {VAL} --device gpu --out-dir {{tmp}}/out', 2,
         "unknown device 'gpu'"),
    Case('infer-opacity-out-of-range', 'infer', SEG + f' {VAL} --opacity 2', 2,
         '--opacity must be in [0, 1]'),
    Case('infer-batch-size-zero', 'infer', SEG + f' {VAL} --batch-size 0', 2,
         '--batch-size must be at least 1'),
    Case('infer-outputs-exist', 'infer', SEG + ' {tmp}/a.png --out-dir {tmp}/out', 2,
         "1 output already exists: {tmp}/out/a_mask.png. Nothing was written. Pass --force",
         prepare=earlier_overlays),
    Case('infer-output-would-replace-input', 'infer', SEG + ' {tmp} --out-dir {tmp} --force', 2,
         'would replace input images', prepare=images_beside_outputs),
    Case('infer-out-dir-is-a-file', 'infer', SEG + f' {VAL} --out-dir {{ws}}/notes.txt', 2,
         "--out-dir '{ws}/notes.txt' is a file"),
    Case('infer-config-missing', 'infer', '{ws}/nope.py {ws}/seg.pth ' + VAL +
         ' --out-dir {tmp}/out', 2, 'config file not found'),
    Case('infer-nan-checkpoint', 'infer', '{ws}/narrow.py {ws}/nan.pth ' + VAL +
         ' --out-dir {tmp}/out', 2, 'holds NaN or Inf in'),
    Case('infer-int8-checkpoint', 'infer', '{ws}/narrow.py {ws}/int8.pth ' + VAL +
         ' --out-dir {tmp}/out', 2, 'holds integer tensors'),
    Case('infer-interrupted', 'infer', SEG + f' {VAL} --out-dir {{tmp}}/out', 130,
         'interrupted (Ctrl-C)', fault=interrupt_inference),
    # deploy
    Case('deploy-already-fused', 'deploy', '{ws}/narrow.py {ws}/fused/narrow_deploy.pth {tmp}/out',
         2, 'is already fused'),
    Case('deploy-deploy-config', 'deploy', FUSED + ' {tmp}/out', 2,
         'already builds a fused (deploy=True) backbone'),
    Case('deploy-not-repvgg', 'deploy',
         f'{ROOT}/configs/pspnet_r50_d8.py {{ws}}/seg.pth {{tmp}}/out',
         2, "builds backbone type 'ResNetV1c'"),
    Case('deploy-nan-checkpoint', 'deploy', '{ws}/narrow.py {ws}/nan.pth {tmp}/out', 2,
         'holds NaN or Inf in'),
    Case('deploy-int8-checkpoint', 'deploy', '{ws}/narrow.py {ws}/int8.pth {tmp}/out', 2,
         'holds integer tensors'),
    Case('deploy-checkpoint-missing', 'deploy', '{ws}/narrow.py {ws}/missing.pth {tmp}/out', 2,
         'checkpoint file not found'),
    Case('deploy-outputs-exist', 'deploy', SEG + ' {tmp}/out', 2,
         '2 outputs already exist: {tmp}/out/narrow_deploy.pth, {tmp}/out/narrow_deploy.py',
         prepare=earlier_deploy),
    Case('deploy-over-its-checkpoint', 'deploy', '{ws}/narrow.py {tmp}/narrow_deploy.pth {tmp} '
         '--force', 2, 'is the checkpoint', prepare=checkpoint_named_like_the_output),
    Case('deploy-out-dir-is-a-file', 'deploy', SEG + ' {ws}/notes.txt', 2,
         "OUT_DIR '{ws}/notes.txt' is a file"),
    Case('deploy-verification-fails', 'deploy', SEG + ' {tmp}/out --force', 1,
         'does not reproduce the train-time model', prepare=earlier_deploy,
         fault=fused_output_differs),
    # convert
    Case('convert-dst-is-src', 'convert', '{ws}/a0.pth {ws}/a0.pth --arch A0 --force', 2,
         "is the source checkpoint SRC '{ws}/a0.pth' itself"),
    Case('convert-dst-is-src-spelt-otherwise', 'convert',
         '{ws}/a0.pth {ws}/empty_dir/../a0.pth --arch A0', 2, 'is the source checkpoint'),
    Case('convert-dst-links-to-src', 'convert', '{ws}/a0.pth {tmp}/link.pth --arch A0 --force',
         2, 'is the source checkpoint', prepare=link_to_source),
    Case('convert-dst-exists', 'convert', '{ws}/a0.pth {tmp}/out.pth --arch A0', 2,
         '1 output already exists: {tmp}/out.pth', prepare=existing_file('out.pth')),
    Case('convert-dst-below-a-file', 'convert', '{ws}/a0.pth {ws}/notes.txt/out.pth --arch A0',
         2, "'{ws}/notes.txt' is a file"),
    Case('convert-unknown-arch', 'convert', '{ws}/a0.pth {tmp}/out.pth --arch B9', 2,
         "unknown RepVGG arch 'B9'"),
    Case('convert-another-arch', 'convert', '{ws}/a0.pth {tmp}/out.pth --arch A1', 2,
         'looks like RepVGG-A0'),
    Case('convert-text-renamed-pth', 'convert', '{ws}/text.pth {tmp}/out.pth --arch A0', 2,
         'not a PyTorch checkpoint'),
    Case('convert-unknown-layout', 'convert', '{ws}/a0.pth {tmp}/out.pth --arch A0 --to caffe',
         2, "invalid choice: 'caffe'"),
    Case('convert-no-arch', 'convert', '{ws}/a0.pth {tmp}/out.pth', 2,
         'the following arguments are required: --arch'),
    Case('convert-inf-checkpoint', 'convert', '{ws}/a0_inf.pth {tmp}/out.pth --arch A0', 2,
         "'{ws}/a0_inf.pth' holds NaN or Inf in 1 of"),
    Case('convert-int8-checkpoint', 'convert', '{ws}/a0_int8.pth {tmp}/out.pth --arch A0', 2,
         'holds integer tensors where the model has floating-point weights'),
    Case('convert-dst-named-onnx', 'convert', '{ws}/a0.pth {tmp}/a0.onnx --arch A0', 2,
         "DST '{tmp}/a0.onnx' is named as an ONNX graph"),
    Case('convert-disk-full', 'convert', '{ws}/a0.pth {tmp}/out.pth --arch A0 --force', 1,
         'No space left on device', prepare=existing_file('out.pth'), fault=fail_save),
    Case('convert-interrupted', 'convert', '{ws}/a0.pth {tmp}/out.pth --arch A0', 130,
         'interrupted (Ctrl-C)', fault=interrupt_save),
    # export
    Case('export-shape-too-small', 'export_onnx', SEG + ' {tmp}/m.onnx --shape 4 4', 2,
         '--shape must be at least 8 8'),
    Case('export-old-opset', 'export_onnx', SEG + ' {tmp}/m.onnx --opset 13', 2,
         '--opset must be >= 17'),
    Case('export-output-exists', 'export_onnx', SEG + ' {tmp}/m.onnx', 2,
         '1 output already exists: {tmp}/m.onnx', prepare=existing_file('m.onnx')),
    Case('export-image-missing', 'export_onnx', SEG + ' {tmp}/m.onnx --image {tmp}/nope.png', 2,
         'image not found'),
    Case('export-image-unreadable', 'export_onnx', SEG + ' {tmp}/m.onnx --image {ws}/notes.txt',
         2, "cannot read image '{ws}/notes.txt'"),
    Case('export-classifier-checkpoint', 'export_onnx', '{ws}/narrow.py {ws}/a0.pth {tmp}/m.onnx',
         2, 'holds no backbone weights'),
    Case('export-out-not-onnx', 'export_onnx', SEG + ' {tmp}/model.pth', 2,
         'OUT must be an .onnx file, got {tmp}/model.pth'),
    Case('export-nan-checkpoint', 'export_onnx', '{ws}/narrow.py {ws}/nan.pth {tmp}/m.onnx ' +
         TINY_EXPORT, 2, 'holds NaN or Inf in'),
    Case('export-int8-checkpoint', 'export_onnx', '{ws}/narrow.py {ws}/int8.pth {tmp}/m.onnx '
         + TINY_EXPORT, 2, 'holds integer tensors'),
    Case('export-verification-fails', 'export_onnx', FUSED + ' {tmp}/m.onnx --force ' + TINY_EXPORT,
         1, 'onnxruntime and PyTorch disagree', prepare=existing_file('m.onnx'),
         fault=onnx_output_differs),
    # quantize
    Case('quantize-output-exists', 'quantize', SEG + ' {tmp}/q.onnx --calib ' + VAL, 2,
         '1 output already exists: {tmp}/q.onnx', prepare=existing_file('q.onnx')),
    Case('quantize-out-not-onnx', 'quantize', SEG + ' {tmp}/q.pth --calib ' + VAL, 2,
         'OUT must be an .onnx file'),
    Case('quantize-no-calibration-images', 'quantize', SEG + ' {tmp}/q.onnx --calib ' + VAL +
         ' --num-calib 0', 2, '--num-calib must be at least 1'),
    Case('quantize-calib-not-a-folder', 'quantize', SEG + ' {tmp}/q.onnx --calib {ws}/notes.txt '
         '--cfg-options test_dataloader.dataset.data_root={tmp}/none', 2,
         "--calib {ws}/notes.txt: not a folder; give a folder of images or 'val'"),
    Case('quantize-nothing-left-to-check', 'quantize', SEG + ' {tmp}/q.onnx --calib ' + VAL +
         ' --num-calib 2 --cfg-options test_dataloader.dataset.data_root={tmp}/none', 2,
         'none is left to check the INT8 model on'),
    Case('quantize-negative-max-float', 'quantize', SEG + ' {tmp}/q.onnx --calib ' + VAL +
         ' --max-float -1', 2, 'need max_float >= 0'),
    Case('quantize-checkpoint-missing', 'quantize', '{ws}/narrow.py {ws}/missing.pth {tmp}/q.onnx '
         '--calib ' + VAL + ' --num-calib 1 --cfg-options '
         'test_dataloader.dataset.data_root={tmp}/none', 2, 'checkpoint file not found'),
    # benchmark
    Case('benchmark-paper-and-fp16', 'benchmark', '{ws}/narrow.py --paper --fp16', 2,
         '--paper fixes batch 16'),
    Case('benchmark-cls-with-config', 'benchmark', '{ws}/narrow.py --cls A0', 2,
         '--cls takes architectures'),
    Case('benchmark-no-config', 'benchmark', '--iters 1', 2, 'give a CONFIG'),
    Case('benchmark-config-missing', 'benchmark', '{ws}/nope.py', 2, 'config file not found'),
    Case('benchmark-zero-iters', 'benchmark', '{ws}/narrow.py --iters 0', 2, 'need --iters >= 1'),
    Case('benchmark-cuda-without-cuda', 'benchmark', '--cls A0 --device cuda', 2,
         'CUDA is not available', marks=(NO_CUDA,)),
    Case('benchmark-json-exists', 'benchmark', '--pooling 8 --json {tmp}/r.json', 2,
         '1 output already exists: {tmp}/r.json', prepare=existing_file('r.json')),
    Case('benchmark-unknown-arch', 'benchmark', '--cls B9 --device cpu', 2,
         "unknown RepVGG arch 'B9'"),
    Case('benchmark-int8-channels-last', 'benchmark',
         '{ws}/narrow.py --device cpu --int8 --channels-last --shape 32 64', 2,
         'runs the float32 NCHW model; drop --fp16/--channels-last'),
    # speed_variants
    Case('variants-unknown', 'speed_variants', '{ws}/narrow.py --device cpu --variants turbo', 2,
         "unknown variants ['turbo']"),
    Case('variants-json-exists', 'speed_variants', '{ws}/narrow.py --json {tmp}/v.json', 2,
         '1 output already exists: {tmp}/v.json', prepare=existing_file('v.json')),
    Case('variants-cuda-without-cuda', 'speed_variants', '{ws}/narrow.py --device cuda', 2,
         'CUDA is not available on this machine', marks=(NO_CUDA,)),
    # prepare, toy city, archs
    Case('prepare-root-missing', 'prepare_cityscapes', '{tmp}/cityscapes', 2,
         "Cityscapes root '{tmp}/cityscapes' does not exist"),
    Case('prepare-labels-missing', 'prepare_cityscapes', '{tmp}/cs', 2, "folder '{tmp}/cs/gtFine' "
         'is missing', prepare=cityscapes_without_labels),
    Case('prepare-no-workers', 'prepare_cityscapes', '{tmp} --nproc 0', 2,
         '--nproc must be at least 1'),
    Case('toy-city-too-small', 'make_toy_cityscapes', '{tmp}/toy --size 16 16', 2,
         'at least 32x32'),
    Case('toy-city-over-a-toy-city', 'make_toy_cityscapes', '{ws}/toy --train 2 --val 2', 2,
         'outputs already exist'),
    Case('check-archs-unknown', 'check_archs', 'A0 B9', 2, "unknown RepVGG arch 'B9'"),
]


def run_tool(tool: str, argv: list, capsys) -> tuple[int, str]:
    """``tools/<tool>.py``'s ``main(argv)`` as the interpreter would end it: the exit
    status (1 for an exception that escapes) and stderr (with the exception's text)."""
    module = TOOLS.get(tool) or TOOLS.setdefault(tool, load_tool(tool))
    try:
        module.main(argv)
        status = 0
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    except Exception as error:  # a bug: Python would print the traceback and exit 1
        print(f'{type(error).__name__}: {error}', file=sys.stderr)
        status = 1
    except KeyboardInterrupt:  # unhandled: Python would print a traceback
        status = 'KeyboardInterrupt escaped'
    return status, capsys.readouterr().err


@pytest.mark.parametrize('case', [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_tool_case(case, ws, ws_print, tmp_path, capsys, monkeypatch):
    if case.prepare:
        case.prepare(ws, tmp_path)
    names = dict(ws=ws, toy=ws / 'toy', tmp=tmp_path, data=data_options(ws / 'toy'))
    before = fingerprint(tmp_path)
    if case.fault:
        case.fault(monkeypatch)
    status, err = run_tool(case.tool, shlex.split(case.argv.format(**names)), capsys)
    monkeypatch.undo()
    assert status == case.status, err[-2000:]
    phrase = case.phrase.format(**names)
    assert phrase in ' '.join(err.split()), err[-2000:]
    if case.status == 2 and 'usage:' not in err:
        # one `error:` paragraph, at the start of a line, after nothing but progress bars
        start = err.find('error: ')
        assert start == 0 or err[start - 1] == '\n', err[-2000:]
        assert err.count('error: ') == 1 and 'Traceback' not in err, err[-2000:]
        assert all('frame/s' in line or 'it/s' in line or not line.strip()
                   for line in err[:start].replace('\r', '\n').splitlines()), err[-2000:]
    assert fingerprint(tmp_path) == before, 'the case changed its own inputs'
    assert fingerprint(ws) == ws_print, 'the case changed the shared inputs'


# The Python API ------------------------------------------------------------------------------

def a0(num_classes=1000):
    return repseg.create_model('A0', num_classes=num_classes)


def with_int8_branch(ws):
    """The A0 state dict with one train-time branch kernel as int8: the key a fused
    model does not have, whose tensor fusing on load would turn into float."""
    state = torch.load(ws / 'a0.pth', weights_only=True)
    key = 'stages.1.0.conv1x1.conv.weight'
    return {**state, key: state[key].mul(100).to(torch.int8)}


API_CASES = [  # (id, call(ws, tmp), exception type, phrase)
    ('load-empty-state-dict', lambda ws, tmp: repseg.load_checkpoint(a0(), {}),
     CheckpointError, 'holds no tensors (an empty state dict)'),
    ('negative-classes', lambda ws, tmp: a0(num_classes=-1),
     ValueError, 'num_classes must be an integer >= 0, got -1'),
    ('reparameterize-a-string', lambda ws, tmp: repseg.reparameterize('hello'),
     TypeError, 'takes a torch.nn.Module (a RepVGG, a backbone or a segmentor holding '
     "RepVGG blocks), got str 'hello'"),
    ('unknown-arch', lambda ws, tmp: repseg.create_model('B5'),
     ValueError, "unknown RepVGG arch 'B5'; choose from A0"),
    ('arch-not-a-string', lambda ws, tmp: repseg.create_model(2),
     TypeError, "RepVGG arch must be a string such as 'B2', got int"),
    ('load-text-file', lambda ws, tmp: repseg.load_checkpoint(a0(), ws / 'text.pth'),
     CheckpointError, 'not a PyTorch checkpoint'),
    ('load-missing-file', lambda ws, tmp: repseg.load_checkpoint(a0(), ws / 'missing.pth'),
     FileNotFoundError, 'checkpoint file not found'),
    ('load-other-arch', lambda ws, tmp: repseg.load_checkpoint(
        repseg.create_model('A1', num_classes=5), ws / 'a0.pth'),
     CheckpointMismatchError, 'the checkpoint looks like RepVGG-A0'),
    ('load-inf-weights', lambda ws, tmp: repseg.load_checkpoint(a0(5), ws / 'a0_inf.pth'),
     CheckpointError, 'holds NaN or Inf in 1 of'),
    ('load-nan-state-dict', lambda ws, tmp: repseg.load_checkpoint(
        a0(5), {k: v * float('nan') for k, v in a0(5).state_dict().items()}),
     CheckpointError, 'the given state dict holds NaN or Inf in'),
    ('load-int8-weights', lambda ws, tmp: repseg.load_checkpoint(a0(5), ws / 'a0_int8.pth'),
     CheckpointError, 'holds integer tensors where the model has floating-point weights: '
     'stem.conv3x3.conv.weight (int8)'),
    ('load-int8-weights-fused-on-load', lambda ws, tmp: repseg.load_checkpoint(
        repseg.create_model('A0', num_classes=5, deploy=True), ws / 'a0_int8.pth'),
     CheckpointError, 'holds integer tensors'),
    ('load-int8-branch-fused-on-load', lambda ws, tmp: repseg.load_checkpoint(
        repseg.create_model('A0', num_classes=5, deploy=True), with_int8_branch(ws)),
     CheckpointError, 'holds integer tensors where the model has floating-point weights: '
     'stages.1.0.conv1x1.conv.weight (int8)'),
    ('convert-onto-itself', lambda ws, tmp: convert_checkpoint(
        ws / 'a0.pth', ws / 'a0.pth', 'A0', force=True),
     FileExistsError, 'is the source checkpoint SRC'),
    ('deploy-nan', lambda ws, tmp: deploy_segmentor(ws / 'narrow.py', ws / 'nan.pth', tmp),
     ValueError, 'the training run diverged'),
    ('segment-nothing', lambda ws, tmp: segment(ws / 'narrow.py', ws / 'seg.pth',
                                                [ws / 'empty_dir'], tmp),
     ValueError, 'no images or videos found'),
    ('toy-city-too-small', lambda ws, tmp: make_toy_cityscapes(tmp, size=(8, 8)),
     ValueError, 'at least 32x32'),
]


@pytest.mark.parametrize('call, error_type, phrase', [pytest.param(*c[1:], id=c[0])
                                                     for c in API_CASES])
def test_api_case(call, error_type, phrase, ws, ws_print, tmp_path):
    with pytest.raises(error_type) as error:
        call(ws, tmp_path)
    assert isinstance(error.value, USER_ERRORS)  # what the tools report with exit status 2
    assert phrase in str(error.value)
    assert fingerprint(ws) == ws_print
    assert not list(tmp_path.iterdir())


def test_matrix_has_forty_cases_across_every_tool():
    assert len(CASES) + len(API_CASES) >= 40
    assert {c.tool for c in CASES} >= {'train', 'test', 'infer', 'deploy', 'convert',
                                       'export_onnx', 'benchmark', 'prepare_cityscapes'}


def test_failed_fault_cases_leave_no_temporary_files(ws, tmp_path, capsys, monkeypatch):
    """A write that dies (disk full, Ctrl-C) leaves the old output and nothing else."""
    (tmp_path / 'out.pth').write_bytes(b'earlier output')
    for fault in (fail_save, interrupt_save):
        with monkeypatch.context() as patch:
            fault(patch)
            run_tool('convert', [str(ws / 'a0.pth'), str(tmp_path / 'out.pth'), '--arch', 'A0',
                                 '--force'], capsys)
        assert sorted(p.name for p in tmp_path.iterdir()) == ['out.pth']
        assert (tmp_path / 'out.pth').read_bytes() == b'earlier output'
