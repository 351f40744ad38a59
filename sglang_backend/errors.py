"""The exceptions sglang_backend raises, as one tree.

Every error the library raises derives from :class:`SGLangError`, so ``except SGLangError``
catches them all. Errors that also mean something to Python in general derive from the
matching builtin too (a start timeout is a :class:`TimeoutError`, bad configuration is a
:class:`ValueError`), so existing handlers keep working::

    SGLangError
    ├── ConfigError (ValueError)                 bad ServerConfig / model_config_dict, at construction
    ├── InvalidRequestError (ValueError)         bad messages, tools or response_format, before any I/O
    │   └── ToolCallParserMissingError           tools used on a launched server without tool_call_parser
    ├── ModelClosedError                         the model was closed (before or during the call)
    ├── ServerError                              the server process misbehaved
    │   ├── ServerStartError                     exited during start: exit code, command, log tail
    │   │   ├── LaunchCommandNotFoundError (FileNotFoundError)  the launch program does not exist
    │   │   ├── PortInUseError (OSError)         the requested port is taken
    │   │   ├── SGLangNotInstalledError          no sglang in the launching Python (checked first)
    │   │   ├── ServerOutOfMemoryError           CUDA out of memory / no room for the KV cache
    │   │   ├── ModelNotFoundError               no such model on the Hub or on disk
    │   │   ├── ModelAccessError                 gated or private model: 401/403
    │   │   ├── GPUUnavailableError              no GPU, no driver, or a driver too old
    │   │   └── UnknownParserError               unknown tool-call or reasoning parser name
    │   ├── ServerStartTimeout (TimeoutError)    not ready within startup_timeout
    │   ├── ServerCrashedError                   died while serving; in-flight calls get this
    │   │   └── ServerHungError                  stopped answering; its tree was killed
    │   └── ServerUnavailableError               could not be reached (connect mode) in time
    └── RequestError                             the server answered a request with an error
        ├── BadRequestError (ValueError)         400/422: the server rejected the request
        ├── AuthenticationError                  401/403: wrong or missing API key
        ├── RequestTimeoutError (TimeoutError)   no answer within the request timeout
        └── StructuredOutputError                reply did not validate against response_format

Start errors recognised from the server's output (see :mod:`sglang_backend._diagnose`) carry
``evidence`` (the line that proved it) and ``hint`` (one sentence saying what to do).

The API key never appears in any message: commands are shown with the key masked.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "ConfigError",
    "GPUUnavailableError",
    "InvalidRequestError",
    "LaunchCommandNotFoundError",
    "ModelAccessError",
    "ModelClosedError",
    "ModelNotFoundError",
    "PortInUseError",
    "RequestError",
    "RequestTimeoutError",
    "SGLangError",
    "SGLangNotInstalledError",
    "ServerCrashedError",
    "ServerError",
    "ServerHungError",
    "ServerOutOfMemoryError",
    "ServerStartError",
    "ServerStartTimeout",
    "ServerUnavailableError",
    "StructuredOutputError",
    "ToolCallParserMissingError",
    "UnknownParserError",
]


class SGLangError(Exception):
    """Base class of every error raised by sglang_backend."""


class ConfigError(SGLangError, ValueError):
    """Invalid configuration, reported when the object is constructed."""


class InvalidRequestError(SGLangError, ValueError):
    """A request argument is malformed; raised before anything is sent."""


class ToolCallParserMissingError(InvalidRequestError):
    """Tools were passed to a launched server started without ``tool_call_parser``.

    SGLang would render the tools into the prompt and return the raw call text in
    ``content``; failing fast says which option to set instead.
    """


class ModelClosedError(SGLangError):
    """The model was closed with ``aclose()``/``close()``; it cannot serve requests."""


def _format_tail(log_tail: Sequence[str]) -> str:
    if not log_tail:
        return "  (the server wrote no output)"
    return "\n".join(f"  | {line}" for line in log_tail)


class ServerError(SGLangError):
    """The server process failed to start, crashed, or could not be reached.

    Attributes:
        summary: the one-line description (the message without command and log tail).
        returncode: the process's exit code (negative: killed by that signal), when it exited.
        command: the launch command line, with the API key masked.
        log_tail: the last lines the server wrote (stdout and stderr merged).
    """

    def __init__(
        self,
        message: str,
        *,
        returncode: int | None = None,
        command: Sequence[str] = (),
        log_tail: Sequence[str] = (),
    ) -> None:
        self.returncode = returncode
        self.command = list(command)
        self.log_tail = list(log_tail)
        self.summary = message
        text = message
        if self.command:
            text += "\ncommand: " + " ".join(self.command)
        if self.log_tail or self.command:
            text += "\nlast server output:\n" + _format_tail(self.log_tail)
        super().__init__(text)


class ServerStartError(ServerError):
    """The server process exited before it became ready (``returncode`` says how).

    Attributes:
        evidence: the server's output line that identified the cause (None when unknown).
        hint: one sentence saying what to do (each subclass has its own default).
    """

    default_hint: str | None = None

    def __init__(
        self,
        message: str,
        *,
        returncode: int | None = None,
        command: Sequence[str] = (),
        log_tail: Sequence[str] = (),
        evidence: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.evidence = evidence
        self.hint = hint if hint is not None else self.default_hint
        text = message
        if evidence:
            text += f"\nevidence: {evidence}"
        if self.hint:
            text += f"\nhint: {self.hint}"
        super().__init__(text, returncode=returncode, command=command, log_tail=log_tail)
        self.summary = message  # the one line, without evidence and hint


class LaunchCommandNotFoundError(ServerStartError, FileNotFoundError):
    """The launch program could not be executed (missing or not executable)."""

    default_hint = (
        "Check ServerConfig.launch_command, or install SGLang "
        "(pip install 'sglang-backend[server]')."
    )


class PortInUseError(ServerStartError, OSError):
    """The requested port is already taken by another process."""

    default_hint = "Choose another port, or leave ServerConfig.port=None to pick a free one."

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        super().__init__(
            f"port {port} on {host} is already in use; choose another port "
            "or leave ServerConfig.port=None to pick a free one"
        )


class SGLangNotInstalledError(ServerStartError):
    """SGLang is not installed in the Python that would launch the server."""

    default_hint = (
        "Install SGLang into that Python (pip install 'sglang-backend[server]'), "
        "or set ServerConfig.launch_command to a Python that has it."
    )


class ServerOutOfMemoryError(ServerStartError):
    """The GPU ran out of memory while loading weights or allocating the KV cache."""

    default_hint = (
        "Lower mem_fraction_static or context_length, use a smaller or quantized model, "
        "raise tp_size, or free the GPU from other processes."
    )


class ModelNotFoundError(ServerStartError):
    """The model is neither a local folder nor a repository on the Hub."""

    default_hint = (
        "Check the model id or path (spelling, organisation); a private repository also "
        "needs HF_TOKEN."
    )


class ModelAccessError(ServerStartError):
    """The model exists but is gated or private and the token may not read it (401/403)."""

    default_hint = (
        "Accept the model's licence on its Hub page and set HF_TOKEN (ServerConfig.env "
        "or the environment) to a token with read access."
    )


class GPUUnavailableError(ServerStartError):
    """No usable GPU: none present, no driver, or a driver too old for this torch."""

    default_hint = (
        "Run on a machine with an NVIDIA GPU and a driver that matches the CUDA build "
        "of torch (nvidia-smi shows both), or check CUDA_VISIBLE_DEVICES."
    )


class UnknownParserError(ServerStartError):
    """The tool-call or reasoning parser name is not one SGLang knows."""

    default_hint = (
        "Use one of the parser names SGLang lists (python -m sglang.launch_server --help) "
        "for tool_call_parser / reasoning_parser."
    )


class ServerStartTimeout(ServerError, TimeoutError):
    """The server did not become ready within ``startup_timeout``; its tree was killed."""


class ServerCrashedError(ServerError):
    """The server process died while serving requests (``returncode`` says how).

    In-flight requests fail with this error; the next request relaunches the server.
    """


class ServerHungError(ServerCrashedError):
    """The server stopped answering (even a short health check) and was declared hung.

    Its process tree was killed; the next request relaunches it (launch mode).
    """

    hint = (
        "The server stopped answering (a stopped process or a wedged scheduler); "
        "its log says where it stalled."
    )


class ServerUnavailableError(ServerError):
    """The server could not be reached or stayed unavailable (connect mode)."""


class RequestError(SGLangError):
    """The server answered a request with an error status.

    Attributes:
        status_code: the HTTP status (None when no response arrived).
        body: the decoded error body, if any.
    """

    def __init__(
        self, message: str, *, status_code: int | None = None, body: object = None
    ) -> None:
        self.status_code = status_code
        self.body = body
        super().__init__(message)


class BadRequestError(RequestError, ValueError):
    """The server rejected the request as invalid (HTTP 400/422)."""


class AuthenticationError(RequestError):
    """The server refused the API key (HTTP 401/403)."""


class RequestTimeoutError(RequestError, TimeoutError):
    """No answer within the request timeout. Not retried: generation may be under way."""


class StructuredOutputError(RequestError):
    """The reply does not parse into the requested ``response_format``.

    Attributes:
        raw: the text the server returned.
    """

    def __init__(self, message: str, *, raw: str | None) -> None:
        self.raw = raw
        super().__init__(f"{message}\nraw reply: {raw!r}")
