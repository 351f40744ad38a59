"""The stand-in's mutable server state, shared by the route modules and the launcher."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import Request

from sglang_backend.testing import STANDIN_VERSION
from sglang_backend.testing._cli import StandinArgs
from sglang_backend.testing._events import EventLog
from sglang_backend.testing._lora import LoraRegistry
from sglang_backend.testing._requests_registry import RequestRegistry, RunningRequest

__all__ = ["WARMUP_HEADER", "ServerState", "Status"]

logger = logging.getLogger("sglang.srt.entrypoints.http_server")

Status = Literal["Starting", "Up", "Draining", "UnHealthy"]
WARMUP_HEADER = "x-standin-warmup"


@dataclass
class ServerState:
    """Mutable server state shared by routes and the launcher."""

    args: StandinArgs
    events: EventLog
    status: Status = "Starting"
    inflight: int = 0
    requests_seen: int = 0
    crash: Callable[[], None] | None = None
    die: Callable[[], None] | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    startup_time: float = field(default_factory=time.time)
    registry: RequestRegistry = field(init=False)
    loras: LoraRegistry = field(init=False)
    crashing: bool = False
    weight_version: str = "default"
    model_path: str = ""
    released: set[str] = field(default_factory=set)  # memory tags released
    unpaused: asyncio.Event = field(default_factory=asyncio.Event)
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    requests_total: int = 0
    health_generation: bool = True

    @property
    def max_total_num_tokens(self) -> int:
        """Size of the simulated KV cache."""
        return max(self.args.context_length * 4, 262_144)

    def count_request(self, request: Request) -> bool:
        """Record a client generation request; return True when it must crash the server."""
        if request.headers.get(WARMUP_HEADER) == "1":
            return False
        self.requests_seen += 1
        self.requests_total += 1
        limit = self.args.standin_crash_after
        if limit is not None and self.requests_seen > limit:
            # The crashing request may die before it has a rid: its line is written now.
            self.crashing = True
            self.events.write("request", rid=None, kind=None)
            return True
        return False

    def __post_init__(self) -> None:
        self.registry = RequestRegistry(self.events, on_request=lambda: not self.crashing)
        self.loras = LoraRegistry(self.args, self.events)
        self.model_path = self.model_path or self.args.model_path
        self.unpaused.set()

    @property
    def is_embedding(self) -> bool:
        """Served as an embedding model (``--is-embedding``)."""
        return self.args.is_embedding

    def enter(self, rid: str, kind: str, request: Request | None = None) -> RunningRequest:
        """A request starts being served: counted for the drain, registered by rid.

        The warm-up's requests are served but not logged (SGLang's warm-up is internal).
        """
        self.inflight += 1
        log = request is None or request.headers.get(WARMUP_HEADER) != "1"
        return self.registry.start(rid, kind, log=log)

    def leave(self, rid: str) -> None:
        """The request *rid* is done (finished, failed or aborted)."""
        self.inflight -= 1
        self.registry.finish(rid)

    async def watch(
        self, rid: str | Sequence[str], chunks: AsyncIterator[bytes], request: Request | None = None
    ) -> AsyncIterator[bytes]:
        """Stream *chunks*; if the client goes away first, abort *rid* as SGLang does.

        uvicorn drops writes to a closed connection silently, so the disconnect is polled
        on *request* between chunks (a cancelled stream counts as a disconnect too).
        """
        done = False
        try:
            async for chunk in chunks:
                if request is not None and await request.is_disconnected():
                    break
                yield chunk
            else:
                done = True
        finally:
            if not done:
                for one in [rid] if isinstance(rid, str) else rid:
                    self.registry.disconnected(one)
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def crash_now(self, reason: str | None = None) -> None:
        """Trigger the simulated scheduler crash and never return (*reason*: what the scheduler hit)."""
        if reason is None:
            logger.error("Stand-in: crashing on request %d (--standin-crash-after)", self.requests_seen)
        else:
            logger.error("Scheduler hit an exception: %s", reason)
        if self.crash is not None:
            self.crash()
        await asyncio.sleep(3.0)  # the child's SIGQUIT normally ends us long before this
        if self.die is not None:
            self.die()
        await asyncio.Event().wait()

    def model_info(self) -> dict[str, Any]:
        """Body of ``/model_info``."""
        args = self.args
        return {
            "model_path": self.model_path,
            "tokenizer_path": args.tokenizer_path,
            "is_generation": not args.is_embedding,
            "preferred_sampling_params": None,
            "weight_version": self.weight_version,
            "served_model_name": args.served_model_name,
            "load_format": "auto",
            "reasoning_parser": args.reasoning_parser,
            "tool_call_parser": args.tool_call_parser,
            "disaggregation_mode": "null",
            "has_image_understanding": False,
            "has_audio_understanding": False,
            "model_type": "qwen2",
            "architectures": ["Qwen2ForCausalLM"],
        }

    def server_info(self) -> dict[str, Any]:
        """Body of ``/server_info``."""
        info = self.args.server_args_dict()
        info.update(
            {
                "status": "ready",
                "max_total_num_tokens": self.max_total_num_tokens,
                "max_req_input_len": self.args.context_length - 1,
                "internal_states": [
                    {
                        "last_gen_throughput": 0.0,
                        "memory_usage": {"weight": 0.0, "kvcache": 0.0, "token_capacity": 0},
                        "avg_spec_accept_length": None,
                    }
                ],
                "version": STANDIN_VERSION,
                "startup_time": self.startup_time,
                "launch_command": " ".join(["python3", "-m", "sglang.launch_server", *sys.argv[1:]]),
                "frontend": "python",
            }
        )
        return info

    def model_card(self) -> dict[str, Any]:
        """One ``/v1/models`` entry."""
        name = self.args.served_model_name
        return {
            "id": name,
            "object": "model",
            "created": self.created,
            "owned_by": "sglang",
            "root": name,
            "parent": None,
            "max_model_len": self.args.context_length,
        }
