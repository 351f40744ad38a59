"""An OpenAI-compatible HTTP front for a :class:`~sglang_backend.pool.ModelPool`.

Needs the ``[front]`` extra (FastAPI, uvicorn)::

    async with PoolFront(pool, port=8000) as front:
        print(front.url, front.api_key)      # any OpenAI client: base_url=front.url + "/v1"
        await asyncio.Event().wait()
"""

from ._app import create_app
from ._server import PoolFront

__all__ = ["PoolFront", "create_app"]
