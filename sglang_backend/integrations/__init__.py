"""Agent frameworks on a server this library launches (or connects to).

Each submodule needs its framework, installed through the matching extra:

==========================================  ==============================================
``sglang_backend.integrations.camel``        ``pip install 'sglang-backend[camel]'``
``sglang_backend.integrations.pydantic_ai``  ``pip install 'sglang-backend[pydantic-ai]'``
``sglang_backend.integrations.langchain``    ``pip install 'sglang-backend[langchain]'``
``sglang_backend.integrations.openai_agents`` ``pip install 'sglang-backend[openai-agents]'``
==========================================  ==============================================

All of them stand on :func:`managed_endpoint` (this module, no framework needed): the model's
server seen as an OpenAI-compatible endpoint whose requests the model admits, so idle stop,
relaunch and teardown keep working under a framework's own OpenAI client.
"""

from ._common import ManagedEndpoint, managed_endpoint

__all__ = ["ManagedEndpoint", "managed_endpoint"]
