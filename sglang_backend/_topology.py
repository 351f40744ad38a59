"""Where a router group's workers are: worker URLs and the disaggregated prefill/decode topology.

Prefill/decode disaggregation (PD) splits a model over two kinds of SGLang servers: prefill
workers compute the KV cache and hand it to decode workers over a transfer backend (RDMA via
Mooncake or NIXL); the router sends each request to one of each. It needs GPUs with a KV
transfer engine, so here it is only *rendered* — SGLang's ``--disaggregation-*`` flags for each
worker and the router's ``--pd-disaggregation --prefill URL PORT --decode URL`` flags — and
judged by SGLang's and smg's own argument parsers in the tests.
"""

from __future__ import annotations

import urllib.parse
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["DecodeWorker", "PDTopology", "PrefillWorker", "TransferBackend", "normalize_worker_url"]

TransferBackend = Literal["mooncake", "nixl", "ascend", "fake", "mori", "mooncake_tcp"]
"""SGLang 0.5.23's --disaggregation-transfer-backend choices."""


def normalize_worker_url(url: str) -> str:
    """``http(s)://host:port`` without a trailing slash; anything else is a ValueError."""
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"worker URL must be http(s)://host:port, got {url!r}")
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment:
        raise ValueError(f"worker URL must name a server, not a path: {url!r}")
    if parsed.username or parsed.password:
        raise ValueError("worker URL must not carry credentials (pass api_key instead)")
    try:
        port = parsed.port
    except ValueError:
        raise ValueError(f"worker URL has a bad port: {url!r}") from None
    if port is None:
        raise ValueError(f"worker URL needs an explicit port: {url!r}")
    return f"{parsed.scheme}://{parsed.netloc}"


class _Worker(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(description="Base URL of the worker's HTTP server.")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return normalize_worker_url(value)


class PrefillWorker(_Worker):
    """A prefill worker; ``bootstrap_port`` is where decode workers fetch its KV cache."""

    bootstrap_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="--disaggregation-bootstrap-port; None = SGLang's default (8998).",
    )


class DecodeWorker(_Worker):
    """A decode worker."""


class PDTopology(BaseModel):
    """Prefill and decode workers plus the KV transfer backend (GPU-only to run)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prefill: tuple[PrefillWorker, ...] = Field(min_length=1)
    decode: tuple[DecodeWorker, ...] = Field(min_length=1)
    transfer_backend: TransferBackend = "mooncake"
    ib_device: str | None = Field(
        default=None, min_length=1, description="--disaggregation-ib-device (e.g. mlx5_0)."
    )

    @model_validator(mode="after")
    def _distinct(self) -> PDTopology:
        urls = [w.url for w in self.prefill] + [w.url for w in self.decode]
        if len(set(urls)) != len(urls):
            raise ValueError("a worker URL appears twice in the PD topology")
        return self

    def worker_urls(self) -> list[str]:
        return [w.url for w in self.prefill] + [w.url for w in self.decode]

    def sglang_args(self, role: Literal["prefill", "decode"], index: int = 0) -> list[str]:
        """SGLang flags that make a server the *index*-th prefill or a decode worker."""
        args = ["--disaggregation-mode", role,
                "--disaggregation-transfer-backend", self.transfer_backend]
        if role == "prefill":
            port = self.prefill[index].bootstrap_port
            if port is not None:
                args += ["--disaggregation-bootstrap-port", str(port)]
        if self.ib_device is not None:
            args += ["--disaggregation-ib-device", self.ib_device]
        return args

    def router_args(self) -> list[str]:
        """smg / sglang-router flags for PD mode (instead of ``--worker-urls``)."""
        args = ["--pd-disaggregation"]
        for worker in self.prefill:
            args += ["--prefill", worker.url]
            if worker.bootstrap_port is not None:
                args.append(str(worker.bootstrap_port))
        for decode in self.decode:
            args += ["--decode", decode.url]
        return args
