"""``sglang-backend status --url U``: health, model, version and served models of a server.

Exit code 1 when the server is unreachable or not healthy. Never echoes ``/server_info``
beyond its version: the rest may hold the API key in clear.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from ._args import positive
from ._report import EXIT_FAILURE, EXIT_OK, say

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               common: argparse.ArgumentParser) -> None:
    status = sub.add_parser(
        "status", parents=[common], allow_abbrev=False,
        help="health, model, version and models of a running server",
    )
    status.add_argument("--url", required=True)
    status.add_argument("--api-key", default=os.environ.get("SGLANG_API_KEY"),
                        help="API key (default: $SGLANG_API_KEY)")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument("--timeout", type=positive, default=10.0, metavar="S")


async def _collect(url: str, api_key: str | None, timeout: float) -> dict[str, Any]:
    """The report: ``healthy``, ``health_status`` and what the info routes say."""
    from .. import _http
    from ..errors import AuthenticationError, ServerUnavailableError

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    report: dict[str, Any] = {"url": url}
    async with _http.new_async_client() as client:

        async def get(*paths: str) -> Any:
            for path in paths:
                response = await client.get(url + path, headers=headers, timeout=timeout)
                if response.status_code in (401, 403):
                    raise AuthenticationError(
                        f"{url}{path} answered {response.status_code}: the API key was refused",
                        status_code=response.status_code,
                    )
                if response.status_code in (404, 405):
                    continue
                if response.status_code != 200:
                    return None
                try:
                    return response.json()
                except ValueError:
                    return None
            return None

        try:
            health = await client.get(f"{url}/health", timeout=timeout)
        except _http.httpx.TransportError as exc:
            raise ServerUnavailableError(
                f"could not reach the server at {url}: {type(exc).__name__}: {exc}"
            ) from exc
        report["healthy"] = health.status_code == 200
        report["health_status"] = health.status_code
        try:
            info = await get("/model_info", "/get_model_info")
            server_info = await get("/server_info", "/get_server_info")
            models = await get("/v1/models")
        except _http.httpx.TransportError as exc:
            raise ServerUnavailableError(
                f"the server at {url} stopped answering: {type(exc).__name__}"
            ) from exc
    if isinstance(info, dict):
        report["model_info"] = {k: v for k, v in info.items() if v not in (None, "", [])}
    if isinstance(server_info, dict):  # never echo the rest: it may hold the API key in clear
        report["version"] = server_info.get("version")
    if isinstance(models, dict) and isinstance(models.get("data"), list):
        report["models"] = [
            {"id": card.get("id"), "max_model_len": card.get("max_model_len")}
            for card in models["data"] if isinstance(card, dict)
        ]
    return report


async def run(args: argparse.Namespace) -> int:
    url = args.url.rstrip("/").removesuffix("/v1")
    report = await _collect(url, args.api_key, args.timeout)
    if args.json:
        say(json.dumps(report, indent=2, sort_keys=True))
    else:
        state = ("healthy" if report["healthy"]
                 else f"NOT healthy (/health {report['health_status']})")
        say(f"{url}: {state}")
        say(f"  version:  {report.get('version') or 'unknown'}")
        model_info = report.get("model_info") or {}
        for key in ("model_path", "served_model_name", "is_generation", "tool_call_parser",
                    "reasoning_parser", "architectures"):
            if key in model_info:
                say(f"  {key + ':':<18}{model_info[key]}")
        for card in report.get("models", []):
            say(f"  model:    {card['id']} (max_model_len {card['max_model_len']})")
    return EXIT_OK if report["healthy"] else EXIT_FAILURE
