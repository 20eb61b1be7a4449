"""Where checkpoint files come from, and how each file format is read.

A checkpoint *source* is what a user writes in ``load_checkpoint``, an ``init_cfg`` or
``tools/convert.py``:

* a local file (``RepVGG-B2-train.pth``, ``model.safetensors``) or a ``file://`` URL;
* an ``http(s)://`` URL (mmpretrain and the authors publish these): downloaded once into
  the torch hub cache (``$TORCH_HOME/hub/checkpoints/<file name>``, where
  ``torch.hub.load_state_dict_from_url`` and mmengine look too), atomically, with a
  progress bar. A download enters the cache only complete: as long as the server
  announced (``Content-Length``) and, where the file name carries a hash
  (``...-60ae8e23.pth``), with a sha256 that starts with it;
* a Hugging Face hub name (timm publishes RepVGG as ``timm/repvgg_b2.rvgg_in1k``; any
  other owner as ``hf-hub:owner/name``): its ``model.safetensors`` (else
  ``pytorch_model.bin``) through ``huggingface_hub``'s cache (``$HF_HUB_CACHE``, by
  default ``$HF_HOME/hub``); with ``HF_HUB_OFFLINE=1`` only the cache is read.

:func:`resolve_checkpoint` turns a source into a local file, or raises
:class:`CheckpointSourceError` saying where to put the file when it cannot be fetched.
:func:`read_checkpoint_file` reads ``.safetensors`` files with the safetensors library
(whatever torch's ``torch.load`` accepts) and everything else with ``torch.load``
(``weights_only=True``). Schemes of mmengine's own loader (``open-mmlab://``,
``torchvision://``, ...) are not repseg's: :func:`is_foreign_url` names them.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional, Union

import torch
from mmengine.logging import print_log

from ..errors import UserError
from ..fileio import write_atomically

PathLike = Union[str, os.PathLike]

DOWNLOAD_SCHEMES = ('http', 'https')
HUB_PREFIX = 'hf-hub:'
#: Hub owners whose names are recognised without ``hf-hub:`` (as timm users write them).
BARE_HUB_OWNERS = ('timm',)
#: Files of a hub repository that hold the weights, in order of preference.
HUB_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')
SAFETENSORS_SUFFIX = '.safetensors'
_REPO_ID = re.compile(r'[\w.-]+/[\w.-]+')
#: A file name ending in ``-<hex>.<suffix>`` names the first hex digits of the file's
#: sha256: torch.hub's ``check_hash`` convention, and the 8 digits of mmpretrain's and
#: mmengine's published names (``repvgg-A0_8xb32_in1k_20221213-60ae8e23.pth``). At least
#: one letter is required, so that a date (``-20221213.pth``) is not taken for a hash.
_HASH_IN_NAME = re.compile(r'-((?=[0-9]*[a-f])[0-9a-f]{8,64})\.[^.]+$')
#: Bytes read per network read while downloading.
DOWNLOAD_CHUNK = 1 << 20
#: Seconds a download may wait for the server before it is given up.
DOWNLOAD_TIMEOUT = 60


class CheckpointSourceError(UserError, FileNotFoundError):
    """A URL or hub name whose file is neither cached nor downloadable."""


def hub_repo_id(source: PathLike) -> Optional[str]:
    """The Hugging Face repository a source names, or None for paths and URLs.

    ``hf-hub:owner/name`` always names a hub repository; ``timm/name`` does unless a local
    file of that name exists (a local file wins).
    """
    text = str(source)
    if text.startswith(HUB_PREFIX):
        repo_id = text[len(HUB_PREFIX):]
        if not _REPO_ID.fullmatch(repo_id):
            raise CheckpointSourceError(
                f"'{text}' is not a hub name: expected {HUB_PREFIX}OWNER/NAME, e.g. "
                f'{HUB_PREFIX}timm/repvgg_b2.rvgg_in1k')
        return repo_id
    owner = text.split('/', 1)[0]
    if owner in BARE_HUB_OWNERS and _REPO_ID.fullmatch(text) and not Path(text).exists():
        return text
    return None


def url_scheme(source: PathLike) -> Optional[str]:
    """``'https'``, ``'file'``, ``'open-mmlab'``, ... for URLs; None for anything else."""
    text = str(source)
    return text.split('://', 1)[0].lower() if '://' in text else None


def is_foreign_url(source: PathLike) -> bool:
    """A URL of a scheme repseg does not fetch (mmengine's ``open-mmlab://``, ``s3://``...)."""
    scheme = url_scheme(source)
    return scheme is not None and scheme not in (*DOWNLOAD_SCHEMES, 'file')


def torch_hub_checkpoint_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints``: where downloaded URLs are cached."""
    return Path(torch.hub.get_dir()) / 'checkpoints'


def url_cache_path(url: str) -> Path:
    """The cache file of a URL: its file name in :func:`torch_hub_checkpoint_dir`
    (``torch.hub.load_state_dict_from_url``'s and mmengine's convention)."""
    name = Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise CheckpointSourceError(f"URL '{url}' names no file (its path ends with '/')")
    return torch_hub_checkpoint_dir() / name


def hf_hub_cache_dir() -> Path:
    """huggingface_hub's cache folder, read from the environment at call time:
    ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get('HF_HUB_CACHE'):
        return Path(os.environ['HF_HUB_CACHE']).expanduser()
    home = os.environ.get('HF_HOME') or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.join('~', '.cache'), 'huggingface')
    return Path(home).expanduser() / 'hub'


def hf_hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks for the cache only,
    read at call time as huggingface_hub reads it at import."""
    value = os.environ.get('HF_HUB_OFFLINE') or os.environ.get('TRANSFORMERS_OFFLINE') or ''
    return value.upper() in ('1', 'ON', 'YES', 'TRUE')


def resolve_checkpoint(source: PathLike) -> Path:
    """The local file of a checkpoint source (see the module docstring).

    URLs and hub names are fetched when not cached yet. A local path is returned as it
    is (whether it exists is the caller's check, with the caller's advice).

    Raises:
        CheckpointSourceError: a URL or hub name that is not cached and cannot be fetched
            (offline, refused, not found; the message names the cache path to fill), or
            a URL of a scheme repseg does not fetch (``s3://``, ``open-mmlab://``).
    """
    repo_id = hub_repo_id(source)
    if repo_id is not None:
        return _resolve_hub_name(repo_id)
    scheme = url_scheme(source)
    if scheme == 'file':
        return Path(urllib.request.url2pathname(urllib.parse.urlparse(str(source)).path))
    if scheme in DOWNLOAD_SCHEMES:
        return _download_once(str(source))
    if scheme is not None:
        raise CheckpointSourceError(
            f"'{source}': repseg reads local files, file://, http:// and https:// URLs and "
            f"hub names, not {scheme}:// (a scheme of mmengine's loader); download the file "
            'and give its path.')
    return Path(source)


def hash_in_name(url: str) -> Optional[str]:
    """The sha256 prefix a URL's file name carries (see :data:`_HASH_IN_NAME`), or None."""
    match = _HASH_IN_NAME.search(Path(urllib.parse.urlparse(url).path).name)
    return match.group(1) if match else None


class _IncompleteDownload(ValueError):
    """A download that ended short of its announced length or hashes to another name."""


def _fetch(url: str, path: str) -> None:
    """Download ``url`` to ``path`` (a temporary file), with a progress bar; raise
    :class:`_IncompleteDownload` unless it is complete (length and named hash)."""
    from tqdm import tqdm

    request = urllib.request.Request(url, headers={'User-Agent': 'repseg'})
    digest, received = hashlib.sha256(), 0
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT) as response, \
            open(path, 'wb') as file:
        announced = response.headers.get('Content-Length', '')
        expected = int(announced) if announced.isdigit() else None
        with tqdm(total=expected, unit='B', unit_scale=True, unit_divisor=1024,
                  desc=url_cache_path(url).name) as bar:
            while chunk := response.read(DOWNLOAD_CHUNK):
                file.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        file.flush()
        os.fsync(file.fileno())
    if expected is not None and received != expected:
        raise _IncompleteDownload(f'the server announced {expected:,} bytes (Content-Length) '
                                  f'but the connection ended after {received:,}')
    prefix = hash_in_name(url)
    if prefix and not digest.hexdigest().startswith(prefix):
        raise _IncompleteDownload(
            f'the file name says its sha256 starts with {prefix}, but the '
            f'{received:,} bytes received hash to {digest.hexdigest()[:len(prefix)]}... '
            '(a damaged download, or not the file published under that name)')


def _download_once(url: str) -> Path:
    target = url_cache_path(url)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    print_log(f'downloading {url} to {target}', logger='current')
    try:  # to a temporary file beside the target, moved there only when complete
        write_atomically(target, lambda path: _fetch(url, path))
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as error:
        raise CheckpointSourceError(
            f'could not download {url}: {_reason(error)}; nothing was cached, run again '
            'to retry. On a machine without network access, download the file elsewhere '
            f'and put it at {target} (the torch hub cache, $TORCH_HOME/hub/checkpoints; the '
            'URL is then read from there), or give the path of a local copy instead of the '
            'URL.') from error
    return target


def _reason(error: BaseException) -> str:
    return str(getattr(error, 'reason', None) or error)


def _resolve_hub_name(repo_id: str) -> Path:
    """A hub repository's weight file from the cache, else downloaded (unless offline)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.utils import EntryNotFoundError

    cache = hf_hub_cache_dir()
    for filename in HUB_WEIGHT_FILES:
        cached = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache))
        if isinstance(cached, str):
            return Path(cached)
    if hf_hub_offline():
        raise CheckpointSourceError(_hub_help(repo_id, cache, 'it is not in the cache and '
                                              'HF_HUB_OFFLINE is set'))
    for filename in HUB_WEIGHT_FILES:
        try:
            return Path(hf_hub_download(repo_id, filename, cache_dir=str(cache)))
        except EntryNotFoundError as error:
            if isinstance(error, FileNotFoundError):  # the hub could not be reached
                raise CheckpointSourceError(_hub_help(repo_id, cache, _reason(error))) from error
        except (OSError, ValueError) as error:  # unknown or gated repository, HTTP error
            raise CheckpointSourceError(
                _hub_help(repo_id, cache, f'{type(error).__name__}: {error}')) from error
    raise CheckpointSourceError(_hub_help(
        repo_id, cache, f"the repository has none of {', '.join(HUB_WEIGHT_FILES)}"))


def _hub_help(repo_id: str, cache: Path, reason: str) -> str:
    folder = f"models--{repo_id.replace('/', '--')}"
    return (f"could not get the weights of hub model '{repo_id}' ({reason}). On a machine "
            f'with network access run `hf download {repo_id} {HUB_WEIGHT_FILES[0]}` '
            '(`huggingface-cli download` before huggingface_hub 1.0) and copy its cache '
            f'folder {folder} into {cache} (the cache HF_HUB_CACHE or HF_HOME/hub names), '
            f'giving {cache / folder}; or download https://huggingface.co/{repo_id}/resolve/'
            f"main/{HUB_WEIGHT_FILES[0]} and give that file's path instead of the hub name.")


def write_checkpoint_file(state: dict, path: PathLike) -> None:
    """Write a state dict atomically in the format :func:`read_checkpoint_file` reads from
    ``path``'s name: ``.safetensors`` with the safetensors library, else ``torch.save``."""
    if Path(path).suffix == SAFETENSORS_SUFFIX:
        from safetensors.torch import save_file

        tensors = {key: value.contiguous() for key, value in state.items()}
        write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata={'format': 'pt'}))
    else:
        write_atomically(path, lambda tmp: torch.save(state, tmp))


def read_checkpoint_file(path: PathLike):
    """The object stored in a checkpoint file: a dict of tensors for ``.safetensors``
    (read with the safetensors library), else whatever ``torch.load(weights_only=True)``
    returns. Errors propagate to the caller, who knows what the file was meant to be."""
    path = Path(path)
    if path.suffix == SAFETENSORS_SUFFIX:
        from safetensors.torch import load_file

        return load_file(str(path), device='cpu')
    return torch.load(path, map_location='cpu', weights_only=True)
