"""ImageNet weights on demand, against a loopback HTTP server started here (never the internet)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.server
import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from caltech_core import settings
from caltech_core.nets import architectures, weights
from caltech_core.nets.architectures import HubWeights, get_spec

ARCH = "mobilenet_v3_small"


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves the server's `files`; a path starting with /drop- sends half of its file, then hangs up."""

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path.split("/")[-1].removeprefix("drop-"))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path.startswith("/drop-"):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        for start in range(0, len(body), 8192):  # in chunks, so progress has several steps
            self.wfile.write(body[start:start + 8192])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[http.server.ThreadingHTTPServer]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.requests = {}, []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache, downloads allowed; returns its checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(settings.OFFLINE.name, raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


def _weights_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _serve(server: http.server.ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch, body: bytes, *,
           route: str = "", hash_prefix: str | None = None, url: str | None = None) -> Path:
    """Point ARCH's weights at `body` on the loopback server under a torchvision-style name; returns the file
    name's future path in the hub cache."""
    digest = hash_prefix or hashlib.sha256(body).hexdigest()[:8]
    name = f"tiny-{digest}.pth"
    server.files[name] = body
    url = url or f"http://127.0.0.1:{server.server_address[1]}/{route}{name}"
    enum = SimpleNamespace(url=url, meta={"_file_size": len(body) / 2**20})
    monkeypatch.setitem(architectures.SPECS, ARCH, dataclasses.replace(get_spec(ARCH), weights=HubWeights(enum)))
    return get_spec(ARCH).weights.path()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*") if not p.name.endswith(".lock")) if folder.exists() else []


def test_download_reports_progress_and_is_reused(hub: Path, server, monkeypatch: pytest.MonkeyPatch) -> None:
    body = _weights_bytes({"w": torch.arange(50_000, dtype=torch.float32)})
    path = _serve(server, monkeypatch, body)
    status = weights.weights_status(ARCH)
    assert not status.available and status.downloadable and status.size_bytes == len(body)
    assert "will download" in status.message and str(hub) in status.message
    seen: list[tuple[int, int]] = []
    assert weights.fetch(ARCH, lambda done, total: seen.append((done, total))) == path
    assert path.read_bytes() == body and _leftovers(hub) == [path.name]
    assert seen[0] == (0, len(body)) and seen[-1] == (len(body), len(body)) and len(seen) >= 3  # 128 KiB reads
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert weights.weights_status(ARCH).available
    weights.fetch(ARCH)
    assert len(server.requests) == 1  # cached: never downloaded twice


def test_wrong_hash_is_refused_and_leaves_no_file(hub: Path, server, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _serve(server, monkeypatch, b"not the weights you want" * 1000, hash_prefix="deadbeef")
    with pytest.raises(weights.WeightsUnavailableError, match="corrupt.*deleted") as err:
        weights.fetch(ARCH)
    assert "deadbeef" in str(err.value) and path.name in str(err.value)
    assert _leftovers(hub) == [] and not weights.weights_status(ARCH).available


def test_a_dropped_connection_leaves_no_file(hub: Path, server, monkeypatch: pytest.MonkeyPatch) -> None:
    body = _weights_bytes({"w": torch.ones(100_000)})
    path = _serve(server, monkeypatch, body, route="drop-")
    with pytest.raises(weights.WeightsUnavailableError, match="corrupt"):  # the half file fails the hash
        weights.fetch(ARCH)
    assert server.requests == [f"/{path.name}"]
    assert _leftovers(hub) == []


def test_unreachable_server_fails_within_the_timeout_with_instructions(
    hub: Path, server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(weights, "TIMEOUT_S", 1.0)
    silent = socket.socket()  # accepts connections (backlog) but never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connection refused
    try:
        for port in (silent.getsockname()[1], closed_port):
            url = f"http://127.0.0.1:{port}/tiny-0123abcd.pth"
            path = _serve(server, monkeypatch, b"x", url=url)
            started = time.monotonic()
            with pytest.raises(weights.WeightsUnavailableError) as err:
                weights.fetch(ARCH)
            assert time.monotonic() - started < 5
            message = str(err.value)
            for part in (path.name, url, str(hub), "--weights PATH", "offline"):
                assert part in message, (part, message)
            assert _leftovers(hub) == []
    finally:
        silent.close()


def test_offline_switch_refuses_without_touching_the_network(
    hub: Path, server, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _serve(server, monkeypatch, b"weights")
    monkeypatch.setenv(settings.OFFLINE.name, "1")
    status = weights.weights_status(ARCH)
    assert not status.available and not status.downloadable
    with pytest.raises(weights.WeightsUnavailableError, match="CALTECH_STUDIO_OFFLINE=1 / --offline") as err:
        weights.fetch(ARCH)
    assert path.name in str(err.value)
    assert server.requests == [] and _leftovers(hub) == []


def test_two_fetches_at_once_download_once_and_agree(hub: Path, server, monkeypatch: pytest.MonkeyPatch) -> None:
    body = _weights_bytes({"w": torch.randn(200_000)})
    path = _serve(server, monkeypatch, body)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(weights.fetch(ARCH))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == [path, path]
    assert path.read_bytes() == body and _leftovers(hub) == [path.name]
    assert len(server.requests) == 1  # the second waited on the lock and reused the file


def test_background_download_for_the_train_page(
    hub: Path, server, monkeypatch: pytest.MonkeyPatch, wait_until: Callable[..., None],
) -> None:
    path = _serve(server, monkeypatch, _weights_bytes({"w": torch.zeros(10_000)}))
    job = weights.start_download(ARCH)
    wait_until(lambda: job.finished, timeout=30)
    assert job.finished and job.error is None and job.done == job.total == path.stat().st_size
    assert weights.download_of(ARCH) is job


def _cli(*argv: str) -> tuple[int, str, str]:
    from caltech_core.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_a_pretrained_run_downloads_as_a_visible_phase(
    hub: Path, server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mini_root: Path
) -> None:
    from caltech_core.nets import models

    torch.manual_seed(0)
    imagenet = models.build_model(ARCH, 1000).state_dict()
    path = _serve(server, monkeypatch, _weights_bytes(imagenet))
    run = ["train", "--arch", ARCH, "--pretrained", "--train", "fc", "--classes", "2", "--max-per-class", "2",
           "--epochs", "1", "--image-size", "64", "--batch-size", "4", "--device", "cpu",
           "--root", str(mini_root), "--store", str(tmp_path / "store"), "--json"]
    code, out, _ = _cli(*run, "--offline")  # the switch forbids the download: a clear failure, no request
    error = json.loads(out.strip().splitlines()[-1])["error"]
    assert code == 1 and "CALTECH_STUDIO_OFFLINE=1 / --offline" in error and path.name in error
    assert server.requests == []
    monkeypatch.delenv(settings.OFFLINE.name)  # --offline set it for this process

    code, out, err = _cli(*run)
    assert code == 0, err
    assert "downloading weights" in err and "MB" in err  # the CLI's stderr progress bar showed the phase
    assert path.is_file() and len(server.requests) == 1
    from caltech_core.runs.store import RunStore

    store = RunStore(tmp_path / "store")
    assert sorted(r.status for r in store.list_runs()) == ["failed", "finished"]
    finished = next(r for r in store.list_runs() if r.status == "finished")
    best = torch.load(store.run_dir(finished.id) / "best.pt", weights_only=True)["model"]
    first_conv = "features.0.0.weight"  # frozen by the "fc" mode: exactly the downloaded weights
    assert torch.equal(best[first_conv], imagenet[first_conv])


def test_train_page_shows_the_weights_state_and_downloads_in_the_background(
    hub: Path, server, monkeypatch: pytest.MonkeyPatch, studio_home: Path, mini_root: Path,
    wait_until: Callable[..., None],
) -> None:
    from apptest_pages import open_page

    monkeypatch.setenv("CALTECH101_ROOT", str(mini_root))
    path = _serve(server, monkeypatch, _weights_bytes({"w": torch.zeros(300_000)}))  # 1.1 MB
    at = open_page("train")
    at.selectbox(key="f_arch").set_value(ARCH).run()
    at.checkbox(key="f_pretrained").check().run()
    assert not at.exception, at.exception
    assert any(f"will download (1 MB) from {get_spec(ARCH).weights.url}" in i.value for i in at.info)
    at.button(key="download_weights").click().run()
    job = weights.download_of(ARCH)
    wait_until(lambda: job.finished, timeout=30)
    at.run()
    assert not at.exception, at.exception
    assert job.error is None and path.is_file()
    assert any(f"ImageNet weights found: {path}" in s.value for s in at.success)

    monkeypatch.setenv(settings.OFFLINE.name, "1")
    path.unlink()
    at.run()
    assert any("downloads are switched off" in w.value for w in at.warning)  # unavailable
    assert not any(b.key == "download_weights" for b in at.button)
