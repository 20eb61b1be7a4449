"""Read any RepVGG checkpoint (official, timm, mmpretrain, repseg; train-time or fused)."""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
import torch.nn as nn
from mmengine.logging import print_log

from ..errors import UserError
from ..models.arch import ARCH_SETTINGS
from ..models.block import RepVGGBlock
from ..models.fusion import BatchNormStats, fold_batch_norm, identity_kernel, sum_branches
from .layouts import CLASSIFIER, LAYOUTS, KeyLayout
from .sources import (DOWNLOAD_SCHEMES, SAFETENSORS_SUFFIX, read_checkpoint_file,
                      resolve_checkpoint, url_scheme)

WRAPPER_KEYS = ('state_dict', 'model')
OPTIONAL_SUFFIX = 'num_batches_tracked'
#: How files written by ``torch.save`` begin: a zip archive (torch >= 1.6) or a pickle.
TORCH_FILE_MAGIC = (b'PK\x03\x04', b'\x80')
#: Prefixes of a whole-segmentor state dict's heads; its backbone is under ``backbone.``.
SEGMENTOR_HEADS = ('decode_head.', 'auxiliary_head.')


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


class CheckpointMismatchError(CheckpointError, KeyError):
    """Checkpoint keys that do not match the model's (missing, unexpected, wrong shape)."""

    def __str__(self):  # KeyError would quote the whole message
        return str(self.args[0])


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` found and did."""

    layout: str
    fused_checkpoint: bool
    fused_on_load: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    segmentor_heads: list[str] = field(default_factory=list)

    def summary(self) -> str:
        kind = 'fused (deploy)' if self.fused_checkpoint else 'train-time'
        text = f'{self.layout} layout, {kind} weights'
        if self.segmentor_heads:
            text += (f'; backbone of a segmentor checkpoint ({len(self.segmentor_heads)} head '
                     'tensors left out)')
        if self.fused_on_load:
            text += f'; fused {len(self.fused_on_load)} train-time blocks on load'
        if self.dropped:
            text += f'; dropped {len(self.dropped)} classifier tensors'
        return text


def _describe_start(head: bytes) -> str:
    text = head.decode('utf-8', errors='replace')
    if text.lstrip().lower().startswith(('<!doctype html', '<html')):
        return 'an HTML page (a download link that returned a web page instead of the file?)'
    if text.isprintable() or all(c.isprintable() or c.isspace() for c in text):
        return f'a text file starting {text.strip()[:40]!r}'
    return f'bytes {head[:8]!r}'


def load_checkpoint_file(path: Union[str, os.PathLike], what: str = 'checkpoint') -> Any:
    """The object stored in a checkpoint file, on the CPU: ``.safetensors`` files through
    the safetensors library, others through ``torch.load(weights_only=True)``; with a
    message that says what is wrong with a file that is not a loadable checkpoint.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: a folder, an empty file, not a file ``torch.save`` wrote (a text
            or HTML file renamed ``.pth``), a truncated one, or one holding Python
            objects that ``weights_only`` loading refuses.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f'{what} file not found: {path}')
    prefix = f"could not read {what} '{path}'"
    if path.is_dir():
        raise CheckpointError(f'{prefix}: it is a folder; give the checkpoint file in it')
    with open(path, 'rb') as file:
        head = file.read(64)
    if not head:
        raise CheckpointError(f'{prefix}: the file is empty (0 bytes), as an interrupted '
                              'download or copy leaves it; get the file again')
    if path.suffix == SAFETENSORS_SUFFIX:
        try:
            return read_checkpoint_file(path)
        except Exception as error:
            raise CheckpointError(
                f'{prefix}: not a readable safetensors file ({type(error).__name__}: '
                f'{str(error).splitlines()[0]}); it may be truncated (interrupted download '
                'or copy?): delete it and fetch it again') from error
    if not head.startswith(TORCH_FILE_MAGIC):
        raise CheckpointError(
            f'{prefix}: it is not a PyTorch checkpoint but {_describe_start(head)}; files '
            'written by torch.save are zip archives (or pickles). Check the path, or '
            'download the checkpoint again')
    if head.startswith(TORCH_FILE_MAGIC[0]) and not zipfile.is_zipfile(path):
        raise CheckpointError(
            f'{prefix}: it is truncated ({path.stat().st_size:,} bytes; the zip archive '
            'torch.save writes has no end), as an interrupted download or copy leaves it; '
            'get the file again')
    try:
        return read_checkpoint_file(path)
    except pickle.UnpicklingError as error:
        found = re.search(r'Unsupported global: GLOBAL (\S+)', str(error))
        objects = f' (e.g. {found.group(1)})' if found else ''
        raise CheckpointError(
            f'{prefix}: it holds Python objects besides tensors{objects}, which repseg '
            'does not unpickle (weights_only=True: a checkpoint must not be able to run '
            'code). If you trust the file, load it with torch.load(path, weights_only=False) '
            "and save its weights alone: torch.save({'state_dict': state_dict}, path)") from error
    except Exception as error:
        raise CheckpointError(
            f'{prefix}: {type(error).__name__}: {str(error).splitlines()[0]}. The file may '
            'be truncated (interrupted download or copy?) or not a PyTorch checkpoint') from error


def read_state_dict(source: Union[str, os.PathLike, Mapping],
                    name: Optional[str] = None) -> tuple[dict, str]:
    """Read a checkpoint source or take a dict; unwrap containers (``state_dict`` /
    ``model``) and strip DDP ``module.`` prefixes.

    A source is a local file (``.safetensors`` read with the safetensors library, others
    with ``torch.load(weights_only=True)``), an http(s) URL (downloaded once into the torch
    hub cache) or a hub name such as ``timm/repvgg_b2.rvgg_in1k``
    (:mod:`repseg.checkpoint.sources`). Returns the flat state dict and a name for messages
    (``name`` if given: the file a dict was read from).

    Raises:
        CheckpointError: no tensors, or a tensor holding NaN or Inf
            (:func:`refuse_nonfinite_weights`), or an unreadable file (a URL's cached
            file is named with the URL to fetch it again).
    """
    if isinstance(source, Mapping):
        obj, name = source, name or 'the given state dict'
    else:
        path = resolve_checkpoint(source)
        name = name or (f"'{source}'" if str(path) == str(source) else f"'{source}' ({path})")
        obj = _load_source_file(source, path)
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f'{name} holds no state dict of tensors '
                              f'(found {type(obj).__name__})')
    if not obj:
        raise CheckpointError(f'{name} holds no tensors (an empty state dict); expected '
                              'the weights of a RepVGG model')
    state = {}
    for key, value in obj.items():
        while key.startswith('module.'):
            key = key[len('module.'):]
        state[key] = value
    refuse_nonfinite_weights(state, name)
    return state, name


def _load_source_file(source, path: Path) -> Any:
    """:func:`load_checkpoint_file` of ``source``'s local file; for a URL, a cached file
    that cannot be read is named with the URL it came from."""
    try:
        return load_checkpoint_file(path)
    except CheckpointError as error:
        if url_scheme(source) not in DOWNLOAD_SCHEMES:
            raise
        raise CheckpointError(
            f'{error}. It is the cached download of {source}: delete it (rm {path}) and '
            'run again to download it anew from that URL') from None


def refuse_nonfinite_weights(state: Mapping[str, torch.Tensor], name: str) -> None:
    """Refuse a state dict with NaN or Inf in any floating-point tensor: no model can
    predict with it, and loading it would let a tool report results of a broken model."""
    broken = [key for key, value in state.items()
              if value.is_floating_point() and not torch.isfinite(value).all()]
    if broken:
        raise CheckpointError(
            f"{name} holds NaN or Inf in {len(broken)} of {len(state)} tensors (e.g. "
            f"{', '.join(broken[:3])}): the training run diverged before it was saved, or "
            'the file is damaged. Use an earlier checkpoint of the run, or get the file '
            'again')


def refuse_integer_weights(state: Mapping[str, torch.Tensor],
                           target: Mapping[str, torch.Tensor], name: str) -> None:
    """Refuse integer tensors where ``target`` (the model's state dict) holds floating
    point ones (or lacks the key: a branch to fuse), which ``load_state_dict`` would cast
    silently; BN's ``num_batches_tracked`` counters are integers by nature."""
    wrong = [f"{key} ({str(value.dtype).replace('torch.', '')})"
             for key, value in state.items()
             if not (value.is_floating_point() or key.endswith(OPTIONAL_SUFFIX))
             and (key not in target or target[key].is_floating_point())]
    if wrong:
        shown = ', '.join(wrong[:3]) + (f', ... ({len(wrong)} in all)' if len(wrong) > 3 else '')
        raise CheckpointError(
            f'{name} holds integer tensors where the model has floating-point weights: '
            f'{shown}. Cast to float they would load without a word and be wrong by their '
            'quantization scale. Give the floating-point checkpoint they were made from '
            '(INT8 models of tools/quantize.py are .onnx files, run by tools/test.py and '
            'tools/infer.py)')


def backbone_of_segmentor(state: Mapping[str, torch.Tensor],
                          name: str = 'checkpoint') -> tuple[dict, list[str]]:
    """The backbone weights of a whole-segmentor state dict (as ``tools/train.py`` and
    ``tools/deploy.py`` write them: ``backbone.*``, ``decode_head.*``, ...), renamed
    without the ``backbone.`` prefix, and the keys left out. Any other state dict comes
    back as it is, with nothing left out."""
    if not any(key.startswith(SEGMENTOR_HEADS) for key in state):
        return dict(state), []
    prefix = 'backbone.'
    backbone = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not backbone:
        raise CheckpointError(f'{name} is a segmentor checkpoint (it has decode_head '
                              'weights) without backbone.* weights; nothing RepVGG to load')
    return backbone, [k for k in state if not k.startswith(prefix)]


def detect_layout(state: Mapping[str, torch.Tensor], name: str = 'checkpoint') -> KeyLayout:
    """The layout under which most of ``state``'s keys are RepVGG keys."""
    def fitting(layout):
        return sum(layout.import_key(k) is not None for k in state if not k.startswith(CLASSIFIER))

    best = max(LAYOUTS.values(), key=fitting)
    if fitting(best) == 0:
        sample = ', '.join(list(state)[:5])
        raise CheckpointError(
            f'unrecognised checkpoint layout in {name}: keys such as {sample} match none of '
            f'the known RepVGG layouts ({", ".join(LAYOUTS)})')
    return best


def to_repseg_keys(state: Mapping[str, torch.Tensor], layout: KeyLayout):
    """Rename ``state`` to repseg's keys; returns (renamed, keys that did not fit)."""
    renamed, unknown = {}, []
    for key, value in state.items():
        new_key = layout.import_key(key)
        if new_key is None:
            unknown.append(key)
        else:
            renamed[new_key] = value
    return renamed, unknown


def _bn_stats(state, prefix, eps: float) -> BatchNormStats:
    return BatchNormStats(state[f'{prefix}.running_mean'], state[f'{prefix}.running_var'],
                          state[f'{prefix}.weight'], state[f'{prefix}.bias'], eps)


def fuse_block_tensors(state: Mapping[str, torch.Tensor], prefix: str, block: RepVGGBlock):
    """The fused kernel and bias of the train-time block ``prefix`` stored in ``state``.

    The BNs fold with the eps ``block`` was built with (its ``norm_cfg``), which is the
    eps the weights were trained with when the config matches the training one.
    """
    branches = [fold_batch_norm(state[f'{prefix}.{part}.conv.weight'],
                                _bn_stats(state, f'{prefix}.{part}.bn', block.bn_eps))
                for part in ('conv3x3', 'conv1x1')]
    if f'{prefix}.identity.weight' in state:
        kernel = identity_kernel(block.in_channels, block.groups,
                                 dtype=state[f'{prefix}.identity.weight'].dtype)
        branches.append(fold_batch_norm(kernel, _bn_stats(state, f'{prefix}.identity', block.bn_eps)))
    return sum_branches(branches)


def _block_prefixes(keys, marker: str) -> set[str]:
    return {k[:-len(marker)] for k in keys if k.endswith(marker)}


def _reconcile_fusion(state: dict, model: nn.Module, name: str, report: LoadReport) -> dict:
    """Fuse train-time blocks of ``state`` where ``model`` has fused blocks."""
    model_keys = model.state_dict().keys()
    model_fused = _block_prefixes(model_keys, '.fused.weight')
    model_train = _block_prefixes(model_keys, '.conv3x3.conv.weight')
    ckpt_fused = _block_prefixes(state, '.fused.weight')
    ckpt_train = _block_prefixes(state, '.conv3x3.conv.weight')
    report.fused_checkpoint = bool(ckpt_fused) and not ckpt_train
    if model_train & ckpt_fused:
        raise CheckpointError(
            f'{name} holds fused (deploy) weights ({report.layout} layout) but the model has '
            'train-time branches; build the model with deploy=True '
            "(e.g. repseg.create_model('B2', deploy=True), or backbone.deploy=True in a config)")
    for prefix in sorted(model_fused & ckpt_train):
        try:
            kernel, bias = fuse_block_tensors(state, prefix, model.get_submodule(prefix))
        except KeyError as missing:
            raise CheckpointMismatchError(
                f'{name}: block {prefix} lacks {missing} needed to fuse it') from None
        for key in [k for k in state if k.startswith(prefix + '.')
                    and not k.startswith(prefix + '.se.')]:
            del state[key]
        state[f'{prefix}.fused.weight'], state[f'{prefix}.fused.bias'] = kernel, bias
        report.fused_on_load.append(prefix)
    return state


def guess_arch(state: Mapping[str, torch.Tensor]) -> str | None:
    """The arch whose stage depths and widths match a repseg-keyed state dict, if any."""
    blocks = [len({k.split('.')[2] for k in state if k.startswith(f'stages.{i}.')
                   and not k.endswith(OPTIONAL_SUFFIX)}) for i in range(4)]
    widths = []
    for i, count in enumerate(blocks):
        weights = [v for k, v in state.items() if k.startswith(f'stages.{i}.{count - 1}.')
                   and k.endswith('weight') and v.ndim == 4 and v.shape[-1] == 3]
        widths.append(weights[0].shape[0] if weights else None)
    layer2 = next((v for k, v in state.items() if k.startswith('stages.0.1.')
                   and v.ndim == 4 and v.shape[-1] == 3), None)
    for arch, spec in ARCH_SETTINGS.items():
        groups_ok = layer2 is None or layer2.shape[1] * spec.groups_of_layer(2) == spec.stage_channels[0]
        if tuple(blocks) == spec.num_blocks and tuple(widths) == spec.stage_channels and groups_ok:
            return arch
    return None


def key_mismatch(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]):
    """``(missing, unexpected, wrong_shape)`` keys of ``state`` against ``target``.

    A BN's ``num_batches_tracked`` is optional (older checkpoints lack it; eval ignores it).
    """
    missing = [k for k in target if k not in state and not k.endswith(OPTIONAL_SUFFIX)]
    unexpected = [k for k in state if k not in target]
    wrong_shape = [f'{k} (checkpoint {tuple(v.shape)}, model {tuple(target[k].shape)})'
                   for k, v in state.items() if k in target and v.shape != target[k].shape]
    return missing, unexpected, wrong_shape


def describe_mismatch(missing, unexpected, wrong_shape, limit: int = 12) -> list[str]:
    """One line per non-empty kind of mismatch, listing up to ``limit`` keys."""
    lines = []
    for title, keys in (('missing in checkpoint', missing),
                        ('unexpected in checkpoint', unexpected),
                        ('wrong shape', wrong_shape)):
        if keys:
            shown = ', '.join(keys[:limit])
            if len(keys) > limit:
                shown += f', ... ({len(keys)} in all)'
            lines.append(f'{title} ({len(keys)}): {shown}')
    return lines


def _mismatch_message(name, report, arch_hint) -> str:
    lines = [f'{name} ({report.layout} layout) does not match the model:']
    lines += ['  ' + line for line in describe_mismatch(report.missing, report.unexpected,
                                                          report.mismatched)]
    if arch_hint:
        lines.append(f'  the checkpoint looks like RepVGG-{arch_hint}')
    return '\n'.join(lines)


def load_checkpoint(model: nn.Module, checkpoint: Union[str, os.PathLike, Mapping],
                    strict: bool = True) -> LoadReport:
    """Load RepVGG weights of any known layout into a repseg model.

    Reads the official, timm, mmpretrain and repseg layouts, raw or wrapped
    (``state_dict`` / ``model``), with or without DDP ``module.`` prefixes, and the
    backbone of a whole-segmentor checkpoint (:func:`backbone_of_segmentor`). Train-time
    weights load into a fused (``deploy=True``) model by fusing them; fused weights for
    a train-time model are refused. The classifier is dropped when the model has none.
    Weights no model can predict with (NaN or Inf) and integer tensors where the model
    holds floating-point ones (which ``load_state_dict`` would cast silently) are refused
    with a :class:`CheckpointError` naming the keys; there is no switch to allow them:
    to look at such a file, read it with ``torch.load``.

    Args:
        model: a :class:`repseg.RepVGG` or the mmseg backbone (anything whose state
            dict uses repseg's key names).
        checkpoint: a file (``.pth``, ``.safetensors``, ...), an http(s) URL, a hub name
            (``timm/repvgg_b2.rvgg_in1k``, ``hf-hub:owner/name``) or a state dict.
        strict: raise :class:`CheckpointMismatchError` listing missing, unexpected and
            wrong-shape keys; otherwise load what matches and report the rest.

    Returns:
        A :class:`LoadReport` (layout found, whether weights were fused, what was dropped).
    """
    raw, name = read_state_dict(checkpoint)
    raw, heads = backbone_of_segmentor(raw, name)
    layout = detect_layout(raw, name)
    state, unknown = to_repseg_keys(raw, layout)
    target = model.state_dict()
    refuse_integer_weights(state, target, name)
    report = LoadReport(layout=layout.name, fused_checkpoint=False, unexpected=unknown,
                        segmentor_heads=heads)
    state = _reconcile_fusion(state, model, name, report)

    if f'{CLASSIFIER}.weight' not in target:
        report.dropped = [k for k in state if k.startswith(CLASSIFIER + '.')]
        for key in report.dropped:
            del state[key]
    missing, unexpected, report.mismatched = key_mismatch(state, target)
    report.missing = missing
    report.unexpected += unexpected
    if strict and (report.missing or report.unexpected or report.mismatched):
        raise CheckpointMismatchError(_mismatch_message(name, report, guess_arch(state)))
    loadable = {k: v for k, v in state.items() if k in target and v.shape == target[k].shape}
    model.load_state_dict(loadable, strict=False)
    print_log(f'loaded {name}: {report.summary()}', logger='current')
    return report


def export_state_dict(state: Mapping[str, torch.Tensor], layout: str) -> dict:
    """Rename a repseg state dict to ``layout`` ('official', 'timm', 'mmpretrain', 'repseg')."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown checkpoint layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    return {LAYOUTS[layout].export_key(k): v for k, v in state.items()}
