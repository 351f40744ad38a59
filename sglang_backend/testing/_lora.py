"""LoRA adapters as SGLang 0.5.23 keeps them: ``--lora-paths``, load/unload, request lookup.

Adapters are names with a path (no weights are read: any path loads). The wording of
every refusal is SGLang's (TokenizerManager, LoRARegistry, LoRAManager). An adapter that
was loaded once and then unloaded is reloaded implicitly when a request names it, as
SGLang's ``lora_ref_cache`` does; a name never loaded is a 400.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from sglang_backend.testing._cli import StandinArgs
from sglang_backend.testing._events import EventLog
from sglang_backend.testing._replies import BadRequest, JSONResponse

__all__ = ["LoraError", "LoraRegistry", "parse_model", "register"]

_NOT_ENABLED = "LoRA is not enabled. Please set `--enable-lora` to enable LoRA."


class LoraError(BadRequest):
    """A request names an adapter that cannot be used (400 with this message)."""


@dataclass
class LoraRef:
    """One adapter (SGLang's ``LoRARef``)."""

    lora_name: str
    lora_path: str
    pinned: bool = False
    lora_id: str = field(default_factory=lambda: uuid.uuid4().hex)


def parse_model(model: str) -> tuple[str, str | None]:
    """``"base:adapter"`` → ``("base", "adapter")`` (SGLang's ``_parse_model_parameter``)."""
    if ":" not in model:
        return model, None
    base, adapter = model.split(":", 1)
    return base, adapter or None


def _keys(names: Any) -> str:
    """Python's ``dict_keys([...])`` text, which SGLang's messages print."""
    return f"dict_keys({list(names)!r})"


class LoraRegistry:
    """Loaded adapters by name, in load order."""

    def __init__(self, args: StandinArgs, events: EventLog) -> None:
        self.enabled = bool(args.enable_lora)
        self._events = events
        self.loaded: OrderedDict[str, LoraRef] = OrderedDict()
        self._ever: dict[str, LoraRef] = {}
        for item in args.lora_paths or []:
            ref = LoraRef(str(item["lora_name"]), str(item["lora_path"]), bool(item.get("pinned")))
            self.loaded[ref.lora_name] = ref
            self._ever[ref.lora_name] = ref

    def result(self, success: bool, error: str | None = None) -> dict[str, Any]:
        """``msgspec_to_builtins(LoRAUpdateOutput)``."""
        adapters = {r.lora_name: r.lora_path for r in self.loaded.values()} if success else None
        return {
            "rid": None,
            "http_worker_ipc": None,
            "success": success,
            "error_message": error if error is not None else ("" if success else None),
            "loaded_adapters": adapters,
        }

    def load(self, name: str, path: str, pinned: bool) -> dict[str, Any]:
        """``/load_lora_adapter``."""
        if not self.enabled:
            return self.result(False, _NOT_ENABLED)
        if name in self.loaded:
            return self.result(False, f"Failed to load LoRA adapter {name} because it is already loaded")
        ref = LoraRef(name, path, pinned)
        self.loaded[name] = ref
        self._ever[name] = ref
        self._events.write("load_lora", name=name)
        return self.result(True)

    def unload(self, name: str) -> dict[str, Any]:
        """``/unload_lora_adapter``."""
        if not self.enabled:
            return self.result(False, _NOT_ENABLED)
        if name not in self.loaded:
            return self.result(
                False, f"LoRA with name {name} does not exist. Loaded LoRAs: {_keys(self.loaded)}"
            )
        del self.loaded[name]
        self._events.write("unload_lora", name=name)
        return self.result(True)

    def require(self, name: str) -> None:
        """A request names adapter *name*: ok, reloaded, or :class:`LoraError`."""
        if not self.enabled:
            raise LoraError(
                f"LoRA adapter '{name}' was requested, but LoRA is not enabled. "
                "Please launch the server with --enable-lora flag and preload adapters "
                "using --lora-paths or /load_lora_adapter endpoint."
            )
        if name in self.loaded:
            self.loaded.move_to_end(name)
            return
        ref = self._ever.get(name)
        if ref is None:
            raise LoraError(
                f"Got LoRA adapter that has never been loaded: {name}\n"
                f"All loaded adapters: {_keys(self._ever)}."
            )
        self.loaded[name] = ref
        self._events.write("load_lora", name=name, implicit=True)

    def check(self, model: str, lora_path: Any = None) -> None:
        """An OpenAI request's adapter: ``model="base:adapter"`` first, else ``lora_path``."""
        _, adapter = parse_model(model)
        names = [adapter] if adapter is not None else lora_path
        for name in names if isinstance(names, list) else [names]:
            if isinstance(name, str) and name:
                self.require(name)

    def cards(self, base: str, created: int) -> list[dict[str, Any]]:
        """``/v1/models`` entries of the adapters (``parent`` is the base model)."""
        return [
            {
                "id": ref.lora_name,
                "object": "model",
                "created": created,
                "owned_by": "sglang",
                "root": ref.lora_path,
                "parent": base,
                "max_model_len": None,
            }
            for ref in self.loaded.values()
        ]


def register(app: FastAPI, loras: LoraRegistry) -> None:
    """Add ``/load_lora_adapter`` and ``/unload_lora_adapter`` (admin-optional endpoints)."""

    async def body(request: Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except ValueError:
            data = None
        return data if isinstance(data, dict) else {}

    def missing(field_name: str, data: dict[str, Any]) -> Response:
        detail = [{"type": "missing", "loc": ["body", field_name], "msg": "Field required", "input": data}]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.post("/load_lora_adapter")
    async def load_lora_adapter(request: Request) -> Response:
        data = await body(request)
        for name in ("lora_name", "lora_path"):
            if not isinstance(data.get(name), str):
                return missing(name, data)
        result = loras.load(data["lora_name"], data["lora_path"], bool(data.get("pinned", False)))
        return JSONResponse(result, status_code=200 if result["success"] else 400)

    @app.post("/unload_lora_adapter")
    async def unload_lora_adapter(request: Request) -> Response:
        data = await body(request)
        if not isinstance(data.get("lora_name"), str):
            return missing("lora_name", data)
        result = loras.unload(data["lora_name"])
        return JSONResponse(result, status_code=200 if result["success"] else 400)
