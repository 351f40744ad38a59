"""``/v1/responses`` bodies as SGLang 0.5.23 serializes them: output items, usage, SSE events.

Every dict here carries exactly the keys SGLang's pydantic models (the OpenAI SDK 2.8 types
it reuses) dump, in their order: reasoning items (``rs_…``), assistant messages (``msg_…``,
with SGLang's ``phase``), function calls (``fc_…`` / ``call_…``); the Responses usage shape;
and the typed stream events, each sent as ``event: <type>`` + ``data: <json>``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sglang_backend.testing._replies import dumps
from sglang_backend.testing._responses_protocol import ECHOABLE_EFFORTS, ResponsesRequest
from sglang_backend.testing._sampling import TokenLogprob

__all__ = [
    "EventWriter",
    "function_call_item",
    "message_item",
    "new_item_id",
    "output_logprobs",
    "reasoning_item",
    "response_body",
    "usage_body",
]


def new_item_id(prefix: str, hex_digits: int | None = None) -> str:
    """An item id as SGLang makes them (``random_uuid()``, cut for calls)."""
    digits = uuid.uuid4().hex
    return f"{prefix}_{digits if hex_digits is None else digits[:hex_digits]}"


def reasoning_item(item_id: str, text: str, *, summary: bool, status: str = "completed") -> dict[str, Any]:
    """A ``reasoning`` item; ``reasoning.summary`` mirrors the trace into ``summary``."""
    return {
        "id": item_id,
        "summary": [{"text": text, "type": "summary_text"}] if summary else [],
        "type": "reasoning",
        "content": [{"text": text, "type": "reasoning_text"}],
        "encrypted_content": None,
        "status": status,
    }


def output_text(text: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """An ``output_text`` content part."""
    return {"annotations": [], "text": text, "type": "output_text", "logprobs": logprobs}


def message_item(
    item_id: str,
    text: str | None,
    *,
    phase: str,
    status: str = "completed",
    logprobs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """An assistant ``message`` item (``text`` None: the empty one a stream opens with)."""
    return {
        "id": item_id,
        "content": [] if text is None else [output_text(text, logprobs)],
        "role": "assistant",
        "status": status,
        "type": "message",
        "phase": phase,
    }


def function_call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str = "completed"
) -> dict[str, Any]:
    """A ``function_call`` item."""
    return {
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
        "type": "function_call",
        "id": item_id,
        "status": status,
    }


def usage_body(input_tokens: int, output_tokens: int, reasoning_tokens: int) -> dict[str, Any]:
    """The Responses usage object (``ResponsesResponse._serialize_usage``)."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": input_tokens + output_tokens,
    }


def output_logprobs(entries: Sequence[TokenLogprob]) -> list[dict[str, Any]]:
    """``include=["message.output_text.logprobs"]``: one entry per generated token."""
    return [
        {
            "token": entry.text,
            "bytes": list(entry.text.encode()),
            "logprob": entry.logprob,
            "top_logprobs": [
                {"token": text, "bytes": list(text.encode()), "logprob": logprob}
                for _token, text, logprob in entry.top
            ],
        }
        for entry in entries
    ]


def response_body(
    req: ResponsesRequest,
    output: list[dict[str, Any]],
    status: str,
    usage: dict[str, Any] | None,
    created: int,
) -> dict[str, Any]:
    """``ResponsesResponse.from_request`` as SGLang serializes it."""
    if req.text is not None:
        text: Any = req.text.model_dump(by_alias=True, exclude_none=True)
    else:
        text = (
            {"format": {"type": "text"}} if output and all(i["type"] == "message" for i in output) else None
        )
    effort = req.reasoning.effort if req.reasoning is not None else None
    return {
        "id": req.request_id, "object": "response", "created_at": created, "model": req.model,
        "output": output, "status": status, "usage": usage,
        "parallel_tool_calls": req.parallel_tool_calls if req.parallel_tool_calls is not None else True,
        "tool_choice": req.effective_tool_choice(),
        "tools": [t.model_dump() for t in req.tools],
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
        "previous_response_id": req.previous_response_id,
        "reasoning": {"effort": effort if effort in ECHOABLE_EFFORTS else None, "summary": None},
        "store": req.store, "temperature": req.temperature, "text": text, "top_p": req.top_p,
        "truncation": req.truncation, "user": req.user, "metadata": req.metadata or {},
    }  # fmt: skip


@dataclass
class _Open:
    """The item a stream is writing into."""

    kind: str  # "reasoning" | "message" | "call"
    item_id: str
    index: int
    text: str = ""  # so far (a call's: its arguments)
    name: str = ""
    call_id: str = ""


@dataclass
class EventWriter:
    """The typed event stream of one response, numbered from 0 (``sequence_number``).

    ``buffer_messages`` holds message events back until a tool call opens or the
    response ends, as SGLang does when the request may call tools, so that the message
    can be marked ``commentary`` (a call follows) or ``final_answer``.
    """

    summary: bool
    buffer_messages: bool = False
    items: list[dict[str, Any]] = field(default_factory=list)  # closed items, wire order
    _seq: int = 0
    _next_index: int = 0
    _open: _Open | None = None
    _pending: list[dict[str, Any]] = field(default_factory=list)

    def _event(self, payload: dict[str, Any]) -> list[bytes]:
        payload["sequence_number"] = self._seq
        self._seq += 1
        if self._pending or (
            self.buffer_messages
            and payload["type"] == "response.output_item.added"
            and payload["item"]["type"] == "message"
        ):
            self._pending.append(payload)
            return []
        return [_frame(payload)]

    def _flush(self, phase: str) -> list[bytes]:
        out = []
        for payload in self._pending:
            item = payload.get("item")
            if isinstance(item, dict) and item.get("type") == "message":
                item["phase"] = phase
            out.append(_frame(payload))
        self._pending.clear()
        return out

    def lifecycle(self, kind: str, response: dict[str, Any]) -> list[bytes]:
        """``response.created`` / ``in_progress`` / ``completed`` / ``incomplete`` / ``failed``."""
        out = self._event({"type": kind, "response": response})
        return self._flush("final_answer") if self._pending else out

    def reasoning(self, delta: str) -> list[bytes]:
        """A piece of the reasoning trace (opens the reasoning item first)."""
        out = self._close() if self._open is not None and self._open.kind != "reasoning" else []
        if self._open is None:
            item_id = new_item_id("rs")
            self._open = _Open("reasoning", item_id, self._take_index())
            empty: dict[str, Any] = {"id": item_id, "summary": [], "type": "reasoning", "content": [],
                     "encrypted_content": None, "status": "in_progress"}  # fmt: skip
            out += self._event({"item": empty, "output_index": self._open.index,
                                "type": "response.output_item.added"})  # fmt: skip
            out += self._event(self._part_event("added", ""))
        assert self._open is not None
        self._open.text += delta
        where = {"item_id": self._open.item_id, "output_index": self._open.index}
        if self.summary:
            out += self._event({"delta": delta, **where, "summary_index": 0,
                                "type": "response.reasoning_summary_text.delta"})  # fmt: skip
        else:
            out += self._event({"content_index": 0, "delta": delta, **where,
                                "type": "response.reasoning_text.delta"})  # fmt: skip
        return out

    def text(self, delta: str) -> list[bytes]:
        """A piece of the answer (opens the message item first)."""
        out = self._close() if self._open is not None and self._open.kind != "message" else []
        if self._open is None:
            item_id = new_item_id("msg")
            self._open = _Open("message", item_id, self._take_index())
            empty = message_item(item_id, None, phase="final_answer", status="in_progress")
            out += self._event({"item": empty, "output_index": self._open.index,
                                "type": "response.output_item.added"})  # fmt: skip
            out += self._event(self._part_event("added", ""))
        assert self._open is not None
        self._open.text += delta
        out += self._event({"content_index": 0, "delta": delta, "item_id": self._open.item_id,
                            "logprobs": [], "output_index": self._open.index,
                            "type": "response.output_text.delta"})  # fmt: skip
        return out

    def call_start(self, name: str) -> list[bytes]:
        """A function call begins (closes the open item; earlier messages become commentary)."""
        out = self._close()
        for item in self.items:
            if item["type"] == "message":
                item["phase"] = "commentary"
        self._open = _Open("call", new_item_id("fc", 8), self._take_index(), name=name,
                           call_id=new_item_id("call", 24))  # fmt: skip
        added = function_call_item(self._open.item_id, self._open.call_id, name, "", "in_progress")
        out += self._event({"item": added, "output_index": self._open.index,
                            "type": "response.output_item.added"})  # fmt: skip
        return out + (self._flush("commentary") if self._pending else [])

    def call_arguments(self, delta: str) -> list[bytes]:
        """A fragment of the open call's arguments."""
        assert self._open is not None
        assert self._open.kind == "call"
        self._open.text += delta
        return self._event({"delta": delta, "item_id": self._open.item_id, "output_index": self._open.index,
                            "type": "response.function_call_arguments.delta"})  # fmt: skip

    def close(self) -> list[bytes]:
        """Close whatever item is open (at the end of the stream)."""
        return self._close()

    def _take_index(self) -> int:
        index = self._next_index
        self._next_index += 1
        return index

    def _part_event(self, which: str, text: str) -> dict[str, Any]:
        assert self._open is not None
        where = {"item_id": self._open.item_id, "output_index": self._open.index}
        if self._open.kind == "message":
            return {"content_index": 0, **where, "part": output_text(text),
                    "type": f"response.content_part.{which}"}  # fmt: skip
        if self.summary:
            return {**where, "part": {"text": text, "type": "summary_text"}, "summary_index": 0,
                    "type": f"response.reasoning_summary_part.{which}"}  # fmt: skip
        return {"content_index": 0, **where, "part": {"text": text, "type": "reasoning_text"},
                "type": f"response.content_part.{which}"}  # fmt: skip

    def _close(self) -> list[bytes]:
        current = self._open
        if current is None:
            return []
        where = {"item_id": current.item_id, "output_index": current.index}
        out: list[bytes] = []
        if current.kind == "call":
            out += self._event({"arguments": current.text, **where, "name": current.name,
                                "type": "response.function_call_arguments.done"})  # fmt: skip
            done = function_call_item(current.item_id, current.call_id, current.name, current.text)
        elif current.kind == "message":
            out += self._event({"content_index": 0, **where, "logprobs": [], "text": current.text,
                                "type": "response.output_text.done"})  # fmt: skip
            out += self._event(self._part_event("done", current.text))
            done = message_item(current.item_id, current.text, phase="final_answer")
        else:
            if self.summary:
                out += self._event({**where, "summary_index": 0, "text": current.text,
                                    "type": "response.reasoning_summary_text.done"})  # fmt: skip
            else:
                out += self._event({"content_index": 0, **where, "text": current.text,
                                    "type": "response.reasoning_text.done"})  # fmt: skip
            out += self._event(self._part_event("done", current.text))
            done = reasoning_item(current.item_id, current.text, summary=self.summary)
        out += self._event({"item": done, "output_index": current.index, "type": "response.output_item.done"})
        self.items.append(done)
        self._open = None
        return out


def _frame(payload: dict[str, Any]) -> bytes:
    return b"event: " + str(payload["type"]).encode() + b"\ndata: " + dumps(payload) + b"\n\n"
