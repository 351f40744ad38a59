"""sglang_backend: an asyncio-native client that launches, supervises and talks to SGLang.

``AsyncSGLangModel`` for asyncio code, ``SGLangModel`` (its thin blocking facade) for
scripts and notebooks; both are context managers and keep CAMEL's ``SGLangModel`` surface.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import ServerConfig, SGLangConfig
    from .errors import (
        AuthenticationError,
        BadRequestError,
        ConfigError,
        GPUUnavailableError,
        InvalidRequestError,
        LaunchCommandNotFoundError,
        ModelAccessError,
        ModelClosedError,
        ModelNotFoundError,
        PortInUseError,
        RequestError,
        RequestTimeoutError,
        ServerCrashedError,
        ServerError,
        ServerHungError,
        ServerOutOfMemoryError,
        ServerStartError,
        ServerStartTimeout,
        ServerUnavailableError,
        SGLangError,
        SGLangNotInstalledError,
        StructuredOutputError,
        ToolCallParserMissingError,
        UnknownParserError,
    )
    from .model import AsyncSGLangModel, ChatRequest, ChatStream, GenerateStream, SGLangTokenCounter
    from .native import (
        GenerateChunk,
        GenerateResult,
        LoRAUpdateResult,
        MetaInfo,
        SamplingParams,
        UpdateWeightsResult,
    )
    from .pool import ModelPool
    from .router import WorkerInfo
    from .server import ServerEvent, ServerState
    from .sync import SGLangModel

# Public names are imported on first use: `import sglang_backend.testing` (the stand-in
# server's entry point) must not pay for the openai SDK it never uses.
_LAZY = {
    **dict.fromkeys(("SGLangConfig", "ServerConfig"), ".config"),
    **dict.fromkeys(("AsyncSGLangModel", "ChatRequest", "ChatStream", "GenerateStream",
                     "SGLangTokenCounter"), ".model"),
    **dict.fromkeys(("GenerateChunk", "GenerateResult", "LoRAUpdateResult", "MetaInfo",
                     "SamplingParams", "UpdateWeightsResult"), ".native"),
    **dict.fromkeys(("ServerEvent", "ServerState"), ".server"),
    "ModelPool": ".pool",
    "WorkerInfo": ".router",
    "SGLangModel": ".sync",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        if name in __all__:
            module = ".errors"
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__version__ = "0.1.0"

__all__ = [
    "AsyncSGLangModel",
    "AuthenticationError",
    "BadRequestError",
    "ChatRequest",
    "ChatStream",
    "ConfigError",
    "GPUUnavailableError",
    "GenerateChunk",
    "GenerateResult",
    "GenerateStream",
    "InvalidRequestError",
    "LaunchCommandNotFoundError",
    "LoRAUpdateResult",
    "MetaInfo",
    "ModelAccessError",
    "ModelClosedError",
    "ModelNotFoundError",
    "ModelPool",
    "PortInUseError",
    "RequestError",
    "RequestTimeoutError",
    "SGLangConfig",
    "SGLangError",
    "SGLangModel",
    "SGLangNotInstalledError",
    "SGLangTokenCounter",
    "SamplingParams",
    "ServerConfig",
    "ServerCrashedError",
    "ServerError",
    "ServerEvent",
    "ServerHungError",
    "ServerOutOfMemoryError",
    "ServerStartError",
    "ServerStartTimeout",
    "ServerState",
    "ServerUnavailableError",
    "StructuredOutputError",
    "ToolCallParserMissingError",
    "UnknownParserError",
    "UpdateWeightsResult",
    "WorkerInfo",
    "__version__",
]
