"""Every weight source users hold: safetensors files, http(s) and file:// URLs, Hugging Face
hub names; through load_checkpoint, the backbone's init_cfg, the pre-flight and
tools/convert.py. timm's own RepVGG-A0 is the oracle; nothing is downloaded from outside:
URLs are served by a local http.server, the hub cache is laid out in a temporary HF_HOME."""
import functools
import hashlib
import http.server
import socket
import struct
import threading

import pytest
import torch
from mmengine.config import ConfigDict
from mmseg.registry import MODELS

import repseg
from repseg.checkpoint import CheckpointError, CheckpointSourceError
from repseg.checkpoint.sources import hash_in_name, url_cache_path
from repseg.mmseg.preflight import pretrained_problems
from tiny_models import load_tool
from timm import create_model as timm_create_model  # noqa: I100 (after repseg)

pytestmark = pytest.mark.usefixtures('single_thread')

NUM_CLASSES = 7
HUB_NAME = 'timm/repvgg_a0.rvgg_in1k'
COMMIT = 'a' * 40


@pytest.fixture(scope='module')
def timm_a0(tmp_path_factory, randomize_weights):
    """timm's RepVGG-A0 (random weights): its state dict, an input, its logits, and the
    state dict written by the safetensors library."""
    torch.manual_seed(41)
    with torch.device('meta'):
        model = timm_create_model('repvgg_a0', num_classes=NUM_CLASSES)
    model = randomize_weights(model.to_empty(device='cpu'), seed=42).eval()
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        expected = model(x)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp('safetensors') / 'model.safetensors'
    from safetensors.torch import save_file

    save_file(state, str(path))
    return state, x, expected, path


def repseg_logits(source, x):
    model = repseg.create_model('A0', num_classes=NUM_CLASSES).eval()
    repseg.load_checkpoint(model, source)
    with torch.no_grad():
        return model(x)


def assert_timm_logits(source, timm_a0):
    _, x, expected, _ = timm_a0
    torch.testing.assert_close(repseg_logits(source, x), expected, rtol=0, atol=1e-5)


# safetensors -----------------------------------------------------------------------------

def test_safetensors_read_by_the_safetensors_library(timm_a0, monkeypatch):
    def no_torch_load(*args, **kwargs):
        raise AssertionError('a .safetensors file must not go through torch.load')

    monkeypatch.setattr(torch, 'load', no_torch_load)
    assert_timm_logits(timm_a0[3], timm_a0)


def test_damaged_safetensors_file_is_a_checkpoint_error(tmp_path):
    path = tmp_path / 'model.safetensors'
    path.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": not json')
    with pytest.raises(CheckpointError, match='could not read checkpoint.*model.safetensors'):
        repseg_logits(path, torch.zeros(1, 3, 32, 32))


# URLs ----------------------------------------------------------------------------------

class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list = []

    def do_GET(self):
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_folder(tmp_path):
    """A folder served on 127.0.0.1: ``(folder, base_url, requested paths)``."""
    folder = tmp_path / 'served'
    folder.mkdir()
    requests = []
    handler = type('Handler', (_CountingHandler,), {'requests': requests})
    server = http.server.ThreadingHTTPServer(
        ('127.0.0.1', 0), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f'http://127.0.0.1:{server.server_address[1]}', requests
    server.shutdown()
    server.server_close()


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / 'torch_home'
    monkeypatch.setenv('TORCH_HOME', str(home))
    return home / 'hub' / 'checkpoints'


def _refused_url(name):
    with socket.socket() as sock:  # a port that nothing listens on once closed
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    return f'http://127.0.0.1:{port}/weights/{name}'


def test_url_is_downloaded_once_into_the_torch_hub_cache(timm_a0, http_folder, torch_home):
    folder, base, requests = http_folder
    torch.save({'state_dict': timm_a0[0]}, folder / 'repvgg_a0_timm.pth')
    url = f'{base}/repvgg_a0_timm.pth'
    assert_timm_logits(url, timm_a0)
    assert_timm_logits(url, timm_a0)
    assert requests == ['/repvgg_a0_timm.pth']
    assert sorted(p.name for p in torch_home.iterdir()) == ['repvgg_a0_timm.pth']


def test_unreachable_url_names_the_url_and_the_cache_path(torch_home):
    url = _refused_url('RepVGG-A0-train.pth')
    with pytest.raises(CheckpointSourceError) as error:
        repseg_logits(url, torch.zeros(1, 3, 32, 32))
    message = str(error.value)
    assert url in message and str(torch_home / 'RepVGG-A0-train.pth') in message
    assert isinstance(error.value, FileNotFoundError)
    assert not torch_home.is_dir() or not list(torch_home.iterdir())  # no partial file


class _FaultyHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``routes[path] = (body, announced length, reset)``: the body, under a
    Content-Length that may be longer, then a clean close or a connection reset."""

    routes: dict = {}

    def do_GET(self):
        body, length, reset = self.routes[self.path]
        self.send_response(200)
        self.send_header('Content-Length', str(length))
        self.end_headers()
        self.wfile.write(body)
        if reset:  # RST instead of FIN: the reader's next recv fails
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack('ii', 1, 0))
            self.connection.close()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def faulty_server():
    """``(routes, base_url)`` of a :class:`_FaultyHandler` server on 127.0.0.1."""
    routes = {}
    handler = type('Handler', (_FaultyHandler,), {'routes': routes})
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    server.handle_error = lambda request, address: None  # the reset socket, closed twice
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield routes, f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown()
    server.server_close()


@pytest.fixture(scope='module')
def a0_file_bytes(timm_a0, tmp_path_factory):
    path = tmp_path_factory.mktemp('served') / 'a0.pth'
    torch.save({'state_dict': timm_a0[0]}, path)
    return path.read_bytes()


def assert_nothing_cached(torch_home):
    assert not torch_home.is_dir() or not list(torch_home.iterdir())  # nor a temporary file


@pytest.mark.parametrize('reset', [False, True], ids=['ends-early', 'connection-reset'])
def test_download_cut_off_mid_file_is_not_cached(reset, a0_file_bytes, faulty_server,
                                                torch_home):
    routes, base = faulty_server
    routes['/a0.pth'] = (a0_file_bytes[:5000], len(a0_file_bytes), reset)
    with pytest.raises(CheckpointSourceError) as error:
        repseg_logits(f'{base}/a0.pth', torch.zeros(1, 3, 32, 32))
    message = ' '.join(str(error.value).split())
    assert f'could not download {base}/a0.pth' in message and 'nothing was cached' in message
    if not reset:
        assert f'announced {len(a0_file_bytes):,} bytes' in message and 'after 5,000' in message
    assert_nothing_cached(torch_home)


def test_download_whose_hash_differs_from_its_name_is_not_cached(a0_file_bytes, faulty_server,
                                                                torch_home):
    routes, base = faulty_server
    routes['/a0-deadbeef.pth'] = (a0_file_bytes, len(a0_file_bytes), False)
    with pytest.raises(CheckpointSourceError) as error:
        repseg_logits(f'{base}/a0-deadbeef.pth', torch.zeros(1, 3, 32, 32))
    actual = hashlib.sha256(a0_file_bytes).hexdigest()[:8]
    assert f'sha256 starts with deadbeef, but the {len(a0_file_bytes):,} bytes received ' \
           f'hash to {actual}' in str(error.value)
    assert_nothing_cached(torch_home)


def test_download_matching_the_hash_in_its_name_is_cached(timm_a0, a0_file_bytes,
                                                         faulty_server, torch_home):
    routes, base = faulty_server
    name = f'a0-{hashlib.sha256(a0_file_bytes).hexdigest()[:8]}.pth'
    routes[f'/{name}'] = (a0_file_bytes, len(a0_file_bytes), False)
    assert_timm_logits(f'{base}/{name}', timm_a0)
    assert [p.name for p in torch_home.iterdir()] == [name]


@pytest.mark.parametrize('name, expected', [
    ('repvgg-A0_8xb32_in1k_20221213-60ae8e23.pth', '60ae8e23'),  # mmpretrain
    ('resnet18-f37072fd.pth', 'f37072fd'),  # torchvision through torch.hub
    ('model-20221213.pth', None),  # a date, not a hash
    ('RepVGG-A0-train.pth', None),
])
def test_hash_in_a_url_file_name(name, expected):
    assert hash_in_name(f'https://example.org/weights/{name}?download=1') == expected


def test_truncated_cached_download_is_named_with_its_url(a0_file_bytes, torch_home):
    url = _refused_url('a0.pth')
    cached = url_cache_path(url)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(a0_file_bytes[:5000])  # as a download cut off before repseg 17 left it
    with pytest.raises(CheckpointError) as error:
        repseg_logits(url, torch.zeros(1, 3, 32, 32))
    message = str(error.value)
    assert 'truncated' in message and f'cached download of {url}' in message
    assert f'rm {cached}' in message


def test_file_url_reads_the_local_file(timm_a0):
    assert_timm_logits(timm_a0[3].as_uri(), timm_a0)


# Hugging Face hub names ------------------------------------------------------------------

@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """An empty Hugging Face home, offline; returns its hub cache folder."""
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf_home'))
    monkeypatch.delenv('HF_HUB_CACHE', raising=False)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    return tmp_path / 'hf_home' / 'hub'


def cache_on_hub(cache, repo_id, path, filename='model.safetensors'):
    """Lay ``path`` out as huggingface_hub caches a download of ``filename``: a blob
    named by its hash, a snapshot link to it and ``refs/main`` naming the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    data = path.read_bytes()
    blob = repo / 'blobs' / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    snapshot = repo / 'snapshots' / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / filename).symlink_to(f'../../blobs/{blob.name}')
    (repo / 'refs').mkdir(exist_ok=True)
    (repo / 'refs' / 'main').write_text(COMMIT)


def test_hub_names_read_from_the_offline_cache(timm_a0, hf_home):
    cache_on_hub(hf_home, HUB_NAME, timm_a0[3])
    assert_timm_logits(HUB_NAME, timm_a0)
    assert_timm_logits(f'hf-hub:{HUB_NAME}', timm_a0)


def test_hub_name_prefers_the_cached_safetensors_over_pytorch_model_bin(timm_a0, hf_home,
                                                                       tmp_path):
    """Both files cached (as a hub repository publishing both leaves them): the
    safetensors file is read, not the pickle-based .bin, which holds other weights here."""
    other = {k: torch.zeros_like(v) if v.is_floating_point() else v
             for k, v in timm_a0[0].items()}
    torch.save(other, tmp_path / 'pytorch_model.bin')
    cache_on_hub(hf_home, HUB_NAME, tmp_path / 'pytorch_model.bin', 'pytorch_model.bin')
    cache_on_hub(hf_home, HUB_NAME, timm_a0[3])
    assert_timm_logits(HUB_NAME, timm_a0)


def test_uncached_hub_name_offline_says_where_to_put_it(hf_home):
    with pytest.raises(CheckpointSourceError) as error:
        repseg_logits(HUB_NAME, torch.zeros(1, 3, 32, 32))
    message = str(error.value)
    assert HUB_NAME in message and 'HF_HUB_OFFLINE' in message
    assert str(hf_home / 'models--timm--repvgg_a0.rvgg_in1k') in message
    assert f'hf download {HUB_NAME} model.safetensors' in message


def test_malformed_hf_hub_name_is_refused():
    with pytest.raises(CheckpointSourceError, match='expected hf-hub:OWNER/NAME'):
        repseg_logits('hf-hub:repvgg_a0', torch.zeros(1, 3, 32, 32))


def test_foreign_scheme_is_refused_with_advice():
    with pytest.raises(CheckpointSourceError, match='not s3://'):
        repseg_logits('s3://bucket/RepVGG-A0-train.pth', torch.zeros(1, 3, 32, 32))


# init_cfg, pre-flight, tools/convert.py -----------------------------------------------

def backbone_cfg(checkpoint):
    return ConfigDict(type='RepVGG', arch='A0', dilation='full',
                      init_cfg=dict(type='Pretrained', checkpoint=checkpoint))


def test_backbone_init_cfg_takes_a_hub_name(timm_a0, hf_home):
    cache_on_hub(hf_home, HUB_NAME, timm_a0[3])
    backbone = MODELS.build(backbone_cfg(HUB_NAME))
    backbone.init_weights()
    reference = repseg.create_model('A0', num_classes=NUM_CLASSES)
    repseg.load_checkpoint(reference, timm_a0[3])
    expected = {k: v for k, v in reference.state_dict().items() if not k.startswith('head.')}
    assert backbone.state_dict().keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in backbone.state_dict().items())


def test_preflight_accepts_cached_sources_and_explains_missing_ones(timm_a0, hf_home,
                                                                   http_folder, torch_home):
    folder, base, requests = http_folder
    torch.save(timm_a0[0], folder / 'a0.pth')
    cache_on_hub(hf_home, HUB_NAME, timm_a0[3])
    for source in (HUB_NAME, f'{base}/a0.pth', str(timm_a0[3]), 'open-mmlab://resnet50_v1c'):
        assert pretrained_problems(dict(backbone=backbone_cfg(source))) == [], source
    assert (torch_home / 'a0.pth').is_file()  # fetched by the check, before any run

    refused = _refused_url('a0_other.pth')
    problems = pretrained_problems(dict(backbone=backbone_cfg(refused)))
    assert len(problems) == 1 and problems[0].startswith('model.backbone.init_cfg:')
    assert refused in problems[0] and str(torch_home / 'a0_other.pth') in problems[0]

    uncached = 'timm/repvgg_b2.rvgg_in1k'
    problems = pretrained_problems(dict(backbone=backbone_cfg(uncached)))
    assert len(problems) == 1 and uncached in problems[0] and 'HF_HUB_OFFLINE' in problems[0]


def test_convert_tool_reads_a_hub_name(timm_a0, hf_home, tmp_path, capsys):
    cache_on_hub(hf_home, HUB_NAME, timm_a0[3])
    dst = tmp_path / 'RepVGG-A0-official.pth'
    load_tool('convert').main([HUB_NAME, str(dst), '--arch', 'A0', '--to', 'official'])
    assert 'timm layout' in capsys.readouterr().out
    assert 'stage0.rbr_dense.conv.weight' in torch.load(dst, weights_only=True)
    assert_timm_logits(dst, timm_a0)
