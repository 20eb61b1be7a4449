#!/usr/bin/env python
"""repseg in a few minutes on a CPU: the whole pipeline on the synthetic toy city.

1. draw the toy city (data/toy_city, Cityscapes layout)
2. train a small PSPNet-RepVGG-A0 from scratch (configs/demo/pspnet_repvgg_a0_toycity.py)
3. test it, next to the mIoU of always predicting the most frequent class
4. fuse it (structural re-parameterization, tools/deploy.py)
5. test the fused model: the same mIoU
6. time train-time vs fused inference; agreement of float16 / bfloat16 predictions
7. quantize the fused model to INT8 (ONNX Runtime, accuracy gate), test it, and time
   PyTorch fp32, ONNX Runtime fp32 and INT8 on one CPU thread
8. write overlays of the val images to work_dirs/demo/overlays
9. classification: draw the toy ImageNet (data/toy_imagenet), train RepVGG-A0 on it
   briefly (configs/classification/repvgg_a0_toy.py), test top-1 train-time and fused
   (the same), classify a few images

Every step is the command a user would type (deploy, quantize, benchmark and infer with
--force, so that the demo runs again over its own outputs). The demo fails loudly (exit
status 1) if the model does not beat the baseline by a wide margin, fusion changes the
mIoU, or the INT8 model loses more than 1 mIoU point (tools/quantize.py's gate), or the
toy classifier does not beat chance by a wide margin or changes its top-1 when fused.
"""
import argparse
import copy
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = 'configs/demo/pspnet_repvgg_a0_toycity.py'
DATA_ROOT = Path('data/toy_city')
WORK_DIR = Path('work_dirs/demo')
NUM_TRAIN, NUM_VAL = 200, 30
#: The trained model must beat the majority-class baseline by this many mIoU points.
MIN_MARGIN = 20.0
#: Largest accepted mIoU change from fusing (float rounding only).
MAX_FUSION_CHANGE = 0.1
TIMED_IMAGES = 20
AGREEMENT_IMAGES = 8
#: INT8 step: calibration images (the first train frames: the gate scores the val split,
#: so no image it scores was calibrated on) and timed rounds per backend.
INT8_CALIBRATION_IMAGES = 16
INT8_TIMED_ROUNDS = 10
#: Classification step: the toy ImageNet (10 classes, chance 10% top-1) and its model.
CLS_CONFIG = 'configs/classification/repvgg_a0_toy.py'
CLS_DATA_ROOT = Path('data/toy_imagenet')
CLS_WORK_DIR = WORK_DIR / 'classification'
CLS_MIN_TOP1 = 25.0
#: Seconds a stopped demo waits for its running tool at each step of :func:`stop`.
CHILD_STOP_WAIT_S = 5.0


class DemoFailure(RuntimeError):
    pass


def announce(step: int, total: int, title: str) -> None:
    print(f'\n{"=" * 78}\n[{step}/{total}] {title}\n{"=" * 78}', flush=True)


def run(*args: str) -> None:
    """Run a repseg tool with this interpreter, output straight to the terminal. If the
    demo is stopped meanwhile (Ctrl-C, SIGTERM), the tool is stopped too and given time
    to clean up (its checkpoint and model writes are atomic)."""
    command = [sys.executable, *args]
    print('$ python ' + ' '.join(args), flush=True)
    with subprocess.Popen(command, cwd=ROOT) as child:
        try:
            code = child.wait()
        except KeyboardInterrupt:  # a terminal's Ctrl-C reaches the tool too
            stop(child, first=None)
            raise
        except BaseException:
            stop(child, first=child.terminate)
            raise
    if code != 0:
        raise DemoFailure(f"step failed: python {' '.join(args)}")


def stop(child: subprocess.Popen, first) -> None:
    """End ``child``: ``first`` (None: wait for it to end by itself), then SIGTERM, then
    SIGKILL, each given :data:`CHILD_STOP_WAIT_S`."""
    for send in (first, child.terminate, child.kill):
        if send is not None:
            send()
        try:
            child.wait(timeout=CHILD_STOP_WAIT_S)
            return
        except subprocess.TimeoutExpired:
            continue


def _terminated(signum, frame) -> None:
    raise SystemExit(128 + signum)


def majority_baseline(label_dir, num_classes: int = 19, ignore_index: int = 255):
    """mIoU (percent) of predicting the most frequent class everywhere, computed as mmseg
    does: that class scores its pixel share, every other class present scores 0, absent
    classes are left out. Returns ``(mIoU, class index)``."""
    import cv2
    import numpy as np

    counts = np.zeros(256, np.int64)
    labels = sorted(Path(label_dir).rglob('*_gtFine_labelTrainIds.png'))
    if not labels:
        raise DemoFailure(f'no *_gtFine_labelTrainIds.png under {label_dir}')
    for path in labels:
        counts += np.bincount(cv2.imread(str(path), cv2.IMREAD_UNCHANGED).ravel(), minlength=256)
    counts[ignore_index] = 0
    counts = counts[:num_classes]
    top = int(counts.argmax())
    return 100.0 * counts[top] / counts.sum() / np.count_nonzero(counts), top


def test_miou(config, checkpoint, work_dir: Path, *options: str) -> float:
    run('tools/test.py', str(config), str(checkpoint), '--work-dir', str(work_dir), *options)
    return json.loads((work_dir / 'metrics.json').read_text())['mIoU']


def ms_per_image(model, images) -> float:
    """Median milliseconds of the tensor forward pass (backbone + decode head) per image."""
    import numpy as np
    import torch

    times = []
    with torch.no_grad():
        for index, image in enumerate(images):
            inputs = model.data_preprocessor(
                dict(inputs=[torch.from_numpy(image.transpose(2, 0, 1).copy())]), False)['inputs']
            start = time.perf_counter()
            model._forward(inputs)
            if index >= 2:  # warm-up
                times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def speed_and_precision(train_cfg, train_ckpt, fused_cfg, fused_ckpt, val_dir: Path) -> dict:
    import cv2
    import torch

    import repseg  # noqa: F401  (before mmseg)
    from repseg.inference import (cpu_has_fast_bfloat16, cpu_has_fast_float16,
                                  prediction_agreement, prepare_for_inference)
    from repseg.segment import load_segmentor

    paths = sorted(val_dir.rglob('*_leftImg8bit.png'))
    images = [cv2.imread(str(p)) for p in paths[:TIMED_IMAGES]]
    train_time = load_segmentor(train_cfg, train_ckpt, fuse=False)
    fused = load_segmentor(fused_cfg, fused_ckpt)
    results = dict(train_ms=ms_per_image(train_time, images), fused_ms=ms_per_image(fused, images),
                   threads=torch.get_num_threads())
    sample = images[:AGREEMENT_IMAGES]
    results['fused_agreement'] = prediction_agreement(train_time, fused, sample)
    native = dict(fp16=cpu_has_fast_float16(), bf16=cpu_has_fast_bfloat16())
    for name, dtype in (('fp16', torch.float16), ('bf16', torch.bfloat16)):
        if native[name]:  # emulated half precision takes minutes here (about 250x fp32)
            half = prepare_for_inference(copy.deepcopy(fused), fp16=True, half_dtype=dtype)
            results[f'{name}_agreement'] = prediction_agreement(fused, half, sample)
    return results


def agreement_text(stats: dict, name: str, title: str) -> str:
    """'float16 vs float32 99.97%', or why it was not measured."""
    value = stats.get(f'{name}_agreement')
    if value is None:
        return f'{title} vs float32 not checked (no native {title} on this CPU: emulated, minutes)'
    return f'{title} vs float32 {100 * value:.2f}%'


def int8_step(fused_cfg: Path, fused_ckpt: Path, fp32_miou: float) -> dict:
    """Quantize, test and time the fused model; returns the numbers for the summary."""
    folder = WORK_DIR / 'int8'
    model = folder / 'demo_int8.onnx'
    run('tools/quantize.py', str(fused_cfg), str(fused_ckpt), str(model), '--calib',
        str(DATA_ROOT / 'leftImg8bit' / 'train'),
        '--num-calib', str(INT8_CALIBRATION_IMAGES), '--force', '--no-progress')
    report = json.loads((ROOT / folder / 'demo_int8.json').read_text())
    int8_miou = test_miou(fused_cfg, model, folder / 'test')
    speed = folder / 'speed.json'
    run('tools/benchmark.py', str(fused_cfg), str(fused_ckpt), '--shape', '128', '256',
        '--device', 'cpu', '--threads', '1', '--int8', str(model), '--warmup', '2',
        '--iters', str(INT8_TIMED_ROUNDS), '--no-flops', '--json', str(speed), '--force')
    fps = {(r['backend'], r['dtype']): r['fps'] for r in json.loads((ROOT / speed).read_text())}
    return dict(fp32_miou=fp32_miou, int8_miou=int8_miou,
                agreement=report['final']['agreement'], kept=report['kept_float'],
                vs_ort=fps[('onnxruntime', 'int8')] / fps[('onnxruntime', 'float32')],
                vs_torch=fps[('onnxruntime', 'int8')] / fps[('pytorch', 'float32')])


def classification_step() -> dict:
    """Toy ImageNet, brief training, top-1 train-time and fused, a few predictions."""
    begin = time.perf_counter()
    run('tools/make_toy_imagenet.py', str(CLS_DATA_ROOT), '--force')
    run('tools/train.py', CLS_CONFIG, '--work-dir', str(CLS_WORK_DIR))
    checkpoint = Path((ROOT / CLS_WORK_DIR / 'last_checkpoint').read_text().strip())
    top1 = {}
    for name, options in (('train-time', ['--no-fuse']), ('fused', [])):
        work_dir = CLS_WORK_DIR / f'test_{name}'
        run('tools/test.py', CLS_CONFIG, str(checkpoint), '--work-dir', str(work_dir), *options)
        top1[name] = json.loads((ROOT / work_dir / 'metrics.json').read_text())['accuracy/top1']
    images = sorted((ROOT / CLS_DATA_ROOT / 'val').rglob('*_0000.JPEG'))[::3]
    run('tools/classify.py', str(checkpoint), *map(str, images), '--topk', '3',
        '--input-size', '56')
    if top1['train-time'] < CLS_MIN_TOP1:
        raise DemoFailure(f"the toy classifier reached top-1 {top1['train-time']:.2f}, not "
                          f'{CLS_MIN_TOP1:g} (chance: 10): training did not learn')
    if abs(top1['fused'] - top1['train-time']) > 1e-6:
        raise DemoFailure(f"fusing changed the toy top-1 from {top1['train-time']:.2f} to "
                          f"{top1['fused']:.2f}")
    return dict(top1, seconds=time.perf_counter() - begin)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)  # stop the running tool too (run)
    from repseg.data.cityscapes_layout import CLASSES
    from repseg.logs import silence_known_warnings

    silence_known_warnings()
    start = time.perf_counter()
    total = 9
    try:
        announce(1, total, f'draw the toy city: {NUM_TRAIN} train / {NUM_VAL} val frames '
                           f'in {DATA_ROOT}')
        if (ROOT / DATA_ROOT).exists():
            shutil.rmtree(ROOT / DATA_ROOT)
        run('tools/make_toy_cityscapes.py', str(DATA_ROOT), '--train', str(NUM_TRAIN),
            '--val', str(NUM_VAL))

        announce(2, total, 'train PSPNet-RepVGG-A0 from scratch (BN, batch 8, 128x128 crops)')
        train_start = time.perf_counter()
        run('tools/train.py', CONFIG, '--work-dir', str(WORK_DIR))
        train_seconds = time.perf_counter() - train_start
        checkpoint = Path((ROOT / WORK_DIR / 'last_checkpoint').read_text().strip())

        announce(3, total, 'test the trained model, train-time branches (whole 128x256 '
                           'val frames)')
        miou = test_miou(CONFIG, checkpoint, WORK_DIR / 'test', '--no-fuse')
        baseline, top = majority_baseline(ROOT / DATA_ROOT / 'gtFine' / 'val')
        print(f'\nmIoU {miou:.2f}  vs  {baseline:.2f} for always predicting '
              f"'{CLASSES[top]}' (the most frequent val class)", flush=True)
        if not miou >= baseline + MIN_MARGIN:
            raise DemoFailure(f'the model reached mIoU {miou:.2f}, not {MIN_MARGIN:g} points '
                              f'above the majority-class baseline {baseline:.2f}: training '
                              'did not learn')

        announce(4, total, 'fuse the RepVGG blocks (structural re-parameterization)')
        run('tools/deploy.py', CONFIG, str(checkpoint), str(WORK_DIR / 'deploy'), '--force')
        stem = Path(CONFIG).stem + '_deploy'
        fused_cfg = WORK_DIR / 'deploy' / f'{stem}.py'
        fused_ckpt = WORK_DIR / 'deploy' / f'{stem}.pth'

        announce(5, total, 'test the fused model')
        fused_miou = test_miou(fused_cfg, fused_ckpt, WORK_DIR / 'test_fused')
        print(f'\nmIoU train-time {miou:.2f}, fused {fused_miou:.2f}', flush=True)
        if abs(fused_miou - miou) > MAX_FUSION_CHANGE:
            raise DemoFailure(f'fusing changed the mIoU from {miou:.2f} to {fused_miou:.2f}')

        announce(6, total, 'inference speed (train-time vs fused) and half-precision agreement')
        stats = speed_and_precision(ROOT / CONFIG, checkpoint, ROOT / fused_cfg,
                                    ROOT / fused_ckpt, ROOT / DATA_ROOT / 'leftImg8bit' / 'val')
        print(f"forward pass per 128x256 image on {stats['threads']} CPU threads: train-time "
              f"{stats['train_ms']:.1f} ms, fused {stats['fused_ms']:.1f} ms "
              f"({stats['train_ms'] / stats['fused_ms']:.2f}x faster fused)\n"
              f"pixels predicted alike: fused vs train-time "
              f"{100 * stats['fused_agreement']:.2f}%, "
              f"{agreement_text(stats, 'fp16', 'float16')}, "
              f"{agreement_text(stats, 'bf16', 'bfloat16')}", flush=True)

        announce(7, total, 'INT8 (ONNX Runtime, CPU): quantize the fused model, test it, time it')
        int8 = int8_step(fused_cfg, fused_ckpt, fused_miou)
        kept = f" ({len(int8['kept'])} layers kept in float)" if int8['kept'] else ''
        print(f"\nmIoU fp32 {int8['fp32_miou']:.2f}, INT8 {int8['int8_miou']:.2f}{kept}; "
              f"INT8 predicts {int8['agreement']:.2f}% of the val pixels as fp32 (ONNX "
              f"Runtime); CPU speed on one thread: INT8 {int8['vs_ort']:.2f}x ONNX Runtime "
              f"fp32, {int8['vs_torch']:.2f}x PyTorch fp32", flush=True)

        announce(8, total, f'overlays of the val frames in {WORK_DIR / "overlays"}')
        run('tools/infer.py', str(fused_cfg), str(fused_ckpt),
            str(DATA_ROOT / 'leftImg8bit' / 'val'), '--out-dir', str(WORK_DIR / 'overlays'),
            '--batch-size', '4', '--no-progress', '--force')

        announce(9, total, 'classification: RepVGG-A0 on the toy ImageNet (10 classes)')
        cls = classification_step()
        print(f"\ntoy ImageNet top-1 (chance 10): train-time {cls['train-time']:.2f}, fused "
              f"{cls['fused']:.2f} ({cls['seconds']:.0f} s for the step)", flush=True)
    except DemoFailure as failure:
        print(f'\nDEMO FAILED: {failure}', file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        print('\ndemo interrupted (Ctrl-C)', file=sys.stderr, flush=True)
        sys.exit(130)
    minutes, seconds = divmod(time.perf_counter() - start, 60)
    print(f'\ndemo done in {int(minutes)} min {seconds:.0f} s (training '
          f'{train_seconds:.0f} s): mIoU {miou:.2f} (baseline {baseline:.2f}), fused '
          f'{fused_miou:.2f}, INT8 {int8["int8_miou"]:.2f}; fused inference '
          f'{stats["train_ms"] / stats["fused_ms"]:.2f}x faster, INT8 {int8["vs_ort"]:.2f}x '
          f'ONNX Runtime fp32; toy classification top-1 {cls["fused"]:.2f} (chance 10); '
          f'outputs in {WORK_DIR}/', flush=True)


if __name__ == '__main__':
    main()
