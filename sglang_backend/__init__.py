"""sglang_backend: an asyncio-native client that launches, supervises and talks to SGLang.

``AsyncSGLangModel`` for asyncio code, ``SGLangModel`` (its thin blocking facade) for
scripts and notebooks; both are context managers and keep CAMEL's ``SGLangModel`` surface.
"""

from .config import ServerConfig, SGLangConfig
from .errors import (
    AuthenticationError,
    BadRequestError,
    ConfigError,
    InvalidRequestError,
    LaunchCommandNotFoundError,
    ModelClosedError,
    PortInUseError,
    RequestError,
    RequestTimeoutError,
    ServerCrashedError,
    ServerError,
    ServerStartError,
    ServerStartTimeout,
    ServerUnavailableError,
    SGLangError,
    StructuredOutputError,
    ToolCallParserMissingError,
)
from .model import AsyncSGLangModel, ChatStream, SGLangTokenCounter
from .server import ServerEvent, ServerState
from .sync import SGLangModel

__version__ = "0.1.0"

__all__ = [
    "AsyncSGLangModel",
    "AuthenticationError",
    "BadRequestError",
    "ChatStream",
    "ConfigError",
    "InvalidRequestError",
    "LaunchCommandNotFoundError",
    "ModelClosedError",
    "PortInUseError",
    "RequestError",
    "RequestTimeoutError",
    "SGLangConfig",
    "SGLangError",
    "SGLangModel",
    "SGLangTokenCounter",
    "ServerConfig",
    "ServerCrashedError",
    "ServerError",
    "ServerEvent",
    "ServerStartError",
    "ServerStartTimeout",
    "ServerState",
    "ServerUnavailableError",
    "StructuredOutputError",
    "ToolCallParserMissingError",
    "__version__",
]
