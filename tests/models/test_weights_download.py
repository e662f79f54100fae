"""Pretrained weights downloaded through huggingface_hub, from a local stand-in for the Hub on 127.0.0.1.

The server answers the Hub's `resolve` URLs with the headers `hf_hub_download` relies on (X-Repo-Commit,
ETag, Content-Length), so the real download path runs: the HEAD, the GET, the cache layout, the
offline switch and the errors, without the network.
"""

from __future__ import annotations

import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import huggingface_hub.constants
import pytest
import timm
import torch
from huggingface_hub.utils import close_session
from safetensors.torch import save

from segladder.models.encoders import Encoder
from segladder.models.registry import WeightsUnavailable

NAME = "test_convnext.r160_in1k"  # timm's 0.27 M-parameter test model; hf_hub_id timm/test_convnext.r160_in1k
FILE_PATH = f"/timm/{NAME}/resolve/main/model.safetensors"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class LocalHub:
    """What the stand-in serves and what it was asked."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.status = 200
        self.endpoint = ""

    def serve_weights(self, seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        state = timm.create_model(NAME).state_dict()
        self.files[FILE_PATH] = save(state)
        return state


def _handler(hub: LocalHub):
    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self._answer(body=False)

        def do_GET(self):
            self._answer(body=True)

        def _answer(self, body: bool):
            hub.requests.append((self.command, self.path))
            data = hub.files.get(self.path)
            if hub.status != 200 or data is None:
                self.send_response(hub.status if hub.status != 200 else 404)
                if data is None:
                    self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def log_message(self, *args):
            pass

    return Handler


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A local Hub as HF_ENDPOINT, empty caches under tmp_path, and the suite's offline switch lifted."""
    state = LocalHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", state.endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    for name in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "SEGLADDER_WEIGHTS"):
        monkeypatch.delenv(name, raising=False)
    # huggingface_hub read HF_HUB_OFFLINE when first imported, after tests/conftest.py had set it.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    close_session()  # a fresh HTTP client, made with this environment
    yield state
    server.shutdown()
    server.server_close()
    close_session()


def cached_file(tmp_path):
    return tmp_path / "hf" / "hub" / f"models--timm--{NAME}" / "snapshots" / COMMIT / "model.safetensors"


def assert_loaded(encoder: Encoder, state: dict[str, torch.Tensor]) -> None:
    # FeatureListNet names stages.2 `stages_2`.
    assert torch.equal(
        encoder.model.stages_2.blocks[0].conv_dw.weight, state["stages.2.blocks.0.conv_dw.weight"]
    )
    assert torch.equal(encoder.model.stem_0.weight, state["stem.0.weight"])


def test_auto_downloads_into_the_hub_cache_and_loads_what_was_served(hub, tmp_path):
    state = hub.serve_weights(seed=5)
    encoder = Encoder(NAME, pretrained="auto")
    assert_loaded(encoder, state)
    assert hub.requests == [("HEAD", FILE_PATH), ("GET", FILE_PATH)]
    assert cached_file(tmp_path).read_bytes() == hub.files[FILE_PATH]
    assert encoder.weights_report.loaded == len(encoder.model.state_dict())


def test_a_repo_with_only_the_pickled_file_is_read_after_the_safetensors_miss(hub):
    import io

    state = hub.serve_weights(seed=9)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    bin_path = FILE_PATH.replace("model.safetensors", "pytorch_model.bin")
    hub.files = {bin_path: buffer.getvalue()}  # as timm's older repos: no model.safetensors
    assert_loaded(Encoder(NAME, pretrained=True), state)
    assert hub.requests == [("HEAD", FILE_PATH), ("HEAD", bin_path), ("GET", bin_path)]


@pytest.mark.medium
def test_a_cached_file_is_used_without_asking_the_hub(hub):
    state = hub.serve_weights(seed=6)
    Encoder(NAME, pretrained=True)
    hub.requests.clear()
    hub.serve_weights(seed=7)  # the Hub's file changed: the cache is still what is read
    assert_loaded(Encoder(NAME, pretrained=True), state)
    assert hub.requests == []


def test_hf_hub_offline_set_after_import_is_honoured(hub, tmp_path, monkeypatch):
    hub.serve_weights(seed=5)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable) as err:
        Encoder(NAME, pretrained=True)
    first, *rest = str(err.value).splitlines()
    assert first.startswith(f"pretrained weights for '{NAME}' are not on this machine")
    assert "HF_HUB_OFFLINE is set" in first
    assert f"https://huggingface.co/timm/{NAME}" in str(err.value)
    assert rest[-1].endswith("(config: model.pretrained=false).")
    assert hub.requests == [] and not cached_file(tmp_path).exists()


def test_a_server_error_is_a_clear_error(hub, tmp_path, monkeypatch):
    hub.serve_weights(seed=5)
    hub.status = 500
    monkeypatch.setattr(time, "sleep", lambda s: None)  # huggingface_hub's retries back off for ~20 s
    with pytest.raises(WeightsUnavailable) as err:
        Encoder(NAME, pretrained=True)
    first = str(err.value).splitlines()[0]
    assert f"{hub.endpoint} answered HTTP 500 (the Hub or mirror is failing; try later)" in first
    assert hub.requests and {r for r in hub.requests} == {("HEAD", FILE_PATH)}
    assert not cached_file(tmp_path).exists()


def test_no_network_is_a_clear_error(hub, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", closed)
    monkeypatch.setattr(time, "sleep", lambda s: None)
    with pytest.raises(WeightsUnavailable) as err:
        Encoder(NAME, pretrained=True)
    first = str(err.value).splitlines()[0]
    assert f"{closed} could not be reached (ConnectError" in first and "is there a network?" in first


@pytest.mark.medium
def test_importing_segladder_changes_no_environment_variable():
    """HF_HUB_OFFLINE stays unset (the user's switch), and albumentations' PyPI check is skipped without
    NO_ALBUMENTATIONS_UPDATE being left behind."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "TRANSFORMERS_")) and k != "NO_ALBUMENTATIONS_UPDATE"
    }
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    code = (
        "import os, sys, types\n"
        "calls = []\n"
        "fake = types.ModuleType('albumentations.check_version')\n"
        "fake.check_for_updates = lambda: calls.append(1)\n"
        "sys.modules['albumentations.check_version'] = fake  # records whether albumentations calls it\n"
        "before = dict(os.environ)\n"
        "import segladder, segladder.models, segladder.data.transforms, huggingface_hub.constants as c\n"
        "ours = ('HF_', 'TRANSFORMERS_', 'NO_ALBUMENTATIONS', 'SEGLADDER')  # torch and cv2 set their own\n"
        "changed = [k for k in {*before, *os.environ} if before.get(k) != os.environ.get(k)]\n"
        "print([k for k in changed if k.startswith(ours)], c.HF_HUB_OFFLINE, calls, 'albumentations' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "False", "[]", "True"], out.stderr


def test_models_fetch_fills_the_cache_ahead_of_training(hub, tmp_path):
    from typer.testing import CliRunner

    import segladder.cli.models  # noqa: F401  (registers the `models` command group)
    from segladder.cli import app

    hub.serve_weights(seed=8)
    sets = ["--set", f"model.encoder={NAME}", "--set", "model.pretrained=auto"]
    result = CliRunner().invoke(app, ["models", "fetch", "snapper", *sets], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Snapper: weights ready" in result.output
    assert cached_file(tmp_path).read_bytes() == hub.files[FILE_PATH]
