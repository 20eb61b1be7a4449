"""Convert a RepVGG checkpoint between layouts, optionally fusing it (``tools/convert.py``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union


from ..errors import InvalidArgumentError
from ..fileio import check_output_location, claim_outputs, refuse_input_as_output
from ..models.arch import canonical_arch_name
from ..models.reparam import reparameterize
from ..models.repvgg import create_model
from .layouts import CLASSIFIER, LAYOUTS
from .sources import SAFETENSORS_SUFFIX, resolve_checkpoint, write_checkpoint_file
from .loader import (backbone_of_segmentor, detect_layout, export_state_dict,
                     load_checkpoint, read_state_dict, to_repseg_keys)

PathLike = Union[str, os.PathLike]


def convert_checkpoint(src: PathLike, dst: PathLike, arch: str, to: str = 'official',
                       deploy: bool = False, force: bool = False) -> dict:
    """Read ``src`` in any known layout, check it against ``arch`` and write ``dst``.

    The checkpoint is loaded (strictly) into ``create_model(arch)`` with the number of
    classes of its classifier (0 if it has none) and fused blocks if it holds fused
    weights, so a file that does not fit the arch is refused before anything is
    written. A whole-segmentor checkpoint (``tools/train.py``, ``tools/deploy.py``)
    gives its backbone. ``dst`` is written atomically: a crash leaves any old ``dst``
    intact, in the format its name says: ``.safetensors`` through the safetensors
    library, anything else through ``torch.save`` (an ``.onnx`` name is refused).

    Args:
        src: checkpoint file (raw, ``state_dict`` / ``model`` container, DDP prefixes).
        dst: output file (``.pth``, ``.safetensors``, ...); its folder must exist; never
            ``src`` itself.
        arch: RepVGG arch, e.g. ``'B2'`` or ``'RepVGG-B2'``.
        to: output layout, one of ``'official'``, ``'timm'``, ``'mmpretrain'``, ``'repseg'``.
        deploy: fuse train-time blocks (the output of a fused input is always fused).
        force: replace an existing ``dst`` (:func:`repseg.fileio.claim_outputs`).

    Returns:
        A summary: ``arch``, ``layout_in``, ``fused_in``, ``num_classes``,
        ``segmentor_heads`` (head tensors left out of a segmentor checkpoint),
        ``layout_out``, ``fused_out``, ``tensors`` and ``dst``.

    Raises:
        ValueError: unknown ``arch`` or ``to``, or a ``dst`` named as another format.
        FileNotFoundError: missing ``src`` or output folder.
        FileExistsError: ``dst`` is ``src`` (also through links), or exists and not
            ``force``.
        repseg.checkpoint.CheckpointError: unreadable checkpoint, or one that does not
            fit ``arch``.
    """
    arch = canonical_arch_name(arch)
    if to not in LAYOUTS:
        raise InvalidArgumentError(f"unknown checkpoint layout {to!r}; choose from "
                                   f"{', '.join(LAYOUTS)}")
    dst = check_output_location(dst, is_folder=False, what='DST')
    if dst.suffix.lower() == '.onnx':  # the tools would run it in ONNX Runtime
        raise InvalidArgumentError(
            f"DST '{dst}' is named as an ONNX graph, but convert writes checkpoints: name "
            f'it .pth (written with torch.save) or {SAFETENSORS_SUFFIX} (written with the '
            'safetensors library); ONNX graphs come from tools/export_onnx.py')
    if Path(src).exists():  # before claim_outputs: SRC as DST is refused even with --force
        refuse_input_as_output({'source checkpoint SRC': src}, dst)
    if not dst.parent.is_dir():
        raise FileNotFoundError(f'output folder not found: {dst.parent}')
    claim_outputs([dst], force, 'another DST')
    src = resolve_checkpoint(src)  # a URL or hub name: its cached file (fetched if needed)
    if not src.exists():
        raise FileNotFoundError(f'checkpoint file not found: {src}')
    refuse_input_as_output({'source checkpoint SRC': src}, dst)
    raw, name = read_state_dict(src)
    raw, _ = backbone_of_segmentor(raw, name)
    state, _ = to_repseg_keys(raw, detect_layout(raw, name))
    classifier = state.get(f'{CLASSIFIER}.weight')
    num_classes = 0 if classifier is None else classifier.shape[0]
    has_fused_blocks = any(key.endswith('.fused.weight') for key in state)

    model = create_model(arch, num_classes=num_classes, deploy=has_fused_blocks)
    report = load_checkpoint(model, src)  # reads src again: its messages name the file
    if deploy:
        reparameterize(model, inplace=True)
    out = export_state_dict(model.state_dict(), to)
    write_checkpoint_file(out, dst)
    return {'arch': arch, 'layout_in': report.layout,
            'fused_in': report.fused_checkpoint, 'num_classes': num_classes,
            'segmentor_heads': len(report.segmentor_heads),
            'layout_out': to, 'fused_out': deploy or has_fused_blocks,
            'tensors': len(out), 'dst': str(dst)}
