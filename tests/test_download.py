"""The download phase against a fake Hub on loopback (HF_ENDPOINT): the real huggingface_hub
client code runs (repo info, tree listing, HEAD + GET of each file) against a tiny repository
served by a FastAPI app in this test."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("huggingface_hub")

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from sglang_backend import ModelAccessError, ModelNotFoundError, ServerConfig, ServerStartTimeout
from sglang_backend._diagnose import check_before_launch
from sglang_backend._download import prepare_model

SHA = "0123456789abcdef0123456789abcdef01234567"
FILES = {
    "config.json": b'{"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}',
    "tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}' * 50,
    "model.safetensors": os.urandom(256 * 1024),
}


@dataclass
class FakeHub:
    url: str = ""
    slow: bool = False
    seen: list[str] = field(default_factory=list)


def _blob(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()  # git's blob id


def _app(hub: FakeHub) -> FastAPI:
    app = FastAPI()

    def _refuse(repo: str) -> Response | None:
        if repo == "org/gated":
            return JSONResponse({"error": "Access to model org/gated is restricted."},
                                status_code=401, headers={"X-Error-Code": "GatedRepo"})
        if repo != "org/tiny":
            return JSONResponse({"error": "Repository not found"}, status_code=404,
                                headers={"X-Error-Code": "RepoNotFound"})
        return None

    @app.get("/api/models/{org}/{name}/revision/{revision}")
    async def info(org: str, name: str, revision: str, request: Request) -> Response:
        hub.seen.append(request.url.path)
        refused = _refuse(f"{org}/{name}")
        if refused is not None:
            return refused
        return JSONResponse({"id": f"{org}/{name}", "sha": SHA, "private": False,
                             "siblings": [{"rfilename": name} for name in FILES]})

    @app.get("/api/models/{org}/{name}/tree/{revision}")
    async def tree(org: str, name: str, revision: str, request: Request) -> Response:
        hub.seen.append(request.url.path)
        refused = _refuse(f"{org}/{name}")
        if refused is not None:
            return refused
        return JSONResponse([{"type": "file", "path": path, "size": len(data), "oid": _blob(data)}
                             for path, data in FILES.items()])

    @app.api_route("/{org}/{name}/resolve/{revision}/{filename:path}", methods=["GET", "HEAD"])
    async def resolve(org: str, name: str, revision: str, filename: str, request: Request) -> Response:
        hub.seen.append(f"{request.method} {request.url.path}")
        refused = _refuse(f"{org}/{name}")
        if refused is not None:
            return refused
        data = FILES[filename]
        headers = {"X-Repo-Commit": SHA, "ETag": f'"{_blob(data)}"', "Content-Length": str(len(data))}
        if request.method == "HEAD" or not hub.slow:
            return Response(data if request.method == "GET" else b"", headers=headers)

        async def trickle() -> AsyncIterator[bytes]:
            for start in range(0, len(data), 1024):
                await asyncio.sleep(0.05)
                yield data[start:start + 1024]

        return StreamingResponse(trickle(), headers=headers)

    return app


@pytest.fixture
async def hub() -> AsyncIterator[FakeHub]:
    state = FakeHub()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    state.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(
        _app(state), log_level="warning", lifespan="off", timeout_graceful_shutdown=1
    ))
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield state
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "hf"


def _config(hub: FakeHub, hf_home: Path, **options: Any) -> ServerConfig:
    return ServerConfig(env={"HF_ENDPOINT": hub.url, "HF_HOME": str(hf_home)}, **options)


async def test_a_hub_model_is_downloaded_before_launch_with_progress(
    hub: FakeHub, hf_home: Path
) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    env = await prepare_model(
        "org/tiny", _config(hub, hf_home),
        emit=lambda kind, pid, **detail: events.append((kind, detail)),
    )
    assert env == {"HF_HUB_OFFLINE": "1"}  # the snapshot is complete: the server needs no network
    snapshot = hf_home / "hub" / "models--org--tiny" / "snapshots" / SHA
    for path, data in FILES.items():
        assert (snapshot / path).read_bytes() == data
    assert {kind for kind, _ in events} == {"download"}
    phases = [detail["phase"] for _, detail in events]
    assert phases[0] == "start"
    assert phases[-1] == "done"
    assert "progress" in phases
    done = events[-1][1]
    assert done["files"] == done["total_files"] == len(FILES)
    assert done["bytes"] == done["total_bytes"] == sum(len(d) for d in FILES.values())
    assert done["path"] == str(snapshot)
    assert any(seen.startswith("GET /org/tiny/resolve/") for seen in hub.seen)

    # A second start finds the complete snapshot: no file is fetched again.
    hub.seen.clear()
    assert await prepare_model("org/tiny", _config(hub, hf_home)) == {
        "HF_HUB_OFFLINE": "1"
    }
    assert not any(seen.startswith("GET /org/tiny/resolve/") for seen in hub.seen)


async def test_download_timeout_is_its_own_bound(hub: FakeHub, hf_home: Path) -> None:
    hub.slow = True  # 256 KiB at 1 KiB per 50 ms: about 13 s
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ServerStartTimeout, match="download_timeout"):
        await prepare_model(
            "org/tiny", _config(hub, hf_home, download_timeout=1.0, startup_timeout=600)
        )
    # Bounded by download_timeout plus a short grace, not by the whole transfer (about 13 s).
    assert loop.time() - started < 8


@pytest.mark.parametrize(("repo", "error"), [("org/gated", ModelAccessError),
                                              ("org/missing", ModelNotFoundError)])
async def test_hub_refusals_are_classified_before_launch(
    hub: FakeHub, hf_home: Path, repo: str, error: type[Exception]
) -> None:
    with pytest.raises(error) as info:
        await prepare_model(repo, _config(hub, hf_home))
    assert info.value.evidence  # type: ignore[attr-defined]
    assert info.value.hint  # type: ignore[attr-defined]


async def test_no_download_offline_for_local_paths_and_for_the_stand_in(
    hub: FakeHub, hf_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    offline = ServerConfig(env={"HF_ENDPOINT": hub.url, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
    assert await prepare_model("org/tiny", offline) == {}
    assert await prepare_model(str(tmp_path), _config(hub, hf_home)) == {}
    # download=None: only a command that runs real SGLang downloads (the stand-in does not).
    from sglang_backend.testing import standin_command

    standin = _config(hub, hf_home, launch_command=standin_command())
    assert await check_before_launch("org/tiny", standin) == {}
    assert hub.seen == []


async def test_a_model_downloads_then_starts_its_server_offline(
    hub: FakeHub, hf_home: Path, tmp_path: Path, standin: Any
) -> None:
    """End to end: a launch command that runs "real SGLang" (a program named ``sglang``,
    here running the stand-in) gets the download phase, then a server with HF_HUB_OFFLINE=1."""
    import io
    import sys

    import psutil

    from sglang_backend import AsyncSGLangModel, ServerEvent
    from sglang_backend._progress import StartupProgress

    program = tmp_path / "bin" / "sglang"
    program.parent.mkdir()
    program.write_text(f"#!{sys.executable}\nimport runpy\n"
                       "runpy.run_module('sglang_backend.testing', run_name='__main__')\n")
    program.chmod(0o755)
    base = standin()
    config = base.model_copy(update={
        "launch_command": (str(program),),
        "env": {"HF_ENDPOINT": hub.url, "HF_HOME": str(hf_home)},
    })
    out = io.StringIO()
    shown = StartupProgress(out, use_rich=False, label="org/tiny")
    events: list[ServerEvent] = []

    def on_event(event: ServerEvent) -> None:
        events.append(event)
        shown(event)

    async with AsyncSGLangModel("org/tiny", server=config, on_event=on_event) as model:
        await model.start()
        pid = model.pid
        assert pid is not None
        env = await asyncio.to_thread(lambda: psutil.Process(pid).environ())
    assert env["HF_HUB_OFFLINE"] == "1"
    kinds = [event.kind for event in events]
    assert kinds.index("download") < kinds.index("ready")
    done = [e for e in events if e.kind == "download" and e.detail["phase"] == "done"]
    assert len(done) == 1
    assert done[0].detail["files"] == len(FILES)
    assert (hf_home / "hub" / "models--org--tiny").is_dir()
    text = out.getvalue()
    assert "Downloading org/tiny" in text
    assert f"{len(FILES)}/{len(FILES)} files" in text


async def test_an_unreachable_hub_fails_before_launch_with_a_network_hint(
    hf_home: Path,
) -> None:
    from sglang_backend import ServerStartError

    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    config = ServerConfig(env={"HF_ENDPOINT": f"http://127.0.0.1:{dead.getsockname()[1]}",
                               "HF_HOME": str(hf_home)})
    try:
        with pytest.raises(ServerStartError, match="failed before launch") as info:
            await prepare_model("org/tiny", config)
    finally:
        dead.close()
    assert type(info.value) is ServerStartError
    assert info.value.hint is not None
    assert "HF_ENDPOINT" in info.value.hint
    assert info.value.returncode is None  # nothing was launched
