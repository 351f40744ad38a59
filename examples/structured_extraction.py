"""Structured extraction: free text in, a validated pydantic object out.

``response_format=MyModel`` sends the model's JSON schema to SGLang (constrained decoding), and
the reply's ``message.parsed`` is a validated ``MyModel`` instance.

Run it anywhere: ``python examples/structured_extraction.py``. Without a GPU it launches the CPU stand-in
server; set ``SGLANG_URL`` (and ``SGLANG_API_KEY``) to use a running server, or run it on a GPU
machine with SGLang installed to launch the real thing (``SGLANG_MODEL`` picks the model;
``SGLANG_BACKEND_STANDIN=1`` forces the stand-in).
"""

from __future__ import annotations

import asyncio
from typing import Literal

from _where import MODEL, model_options
from pydantic import BaseModel, Field

from sglang_backend import AsyncSGLangModel, StructuredOutputError


class LineItem(BaseModel):
    description: str
    quantity: int = Field(ge=0)
    unit_price: float = Field(ge=0)


class Invoice(BaseModel):
    """What we want out of the text."""

    vendor: str
    currency: Literal["EUR", "USD", "GBP"]
    items: list[LineItem]
    paid: bool


TEXT = """Invoice from ACME Tools Ltd. 3 hammers at 12.50 EUR each and 1 toolbox at 40 EUR.
Status: not yet paid."""


async def main() -> None:
    async with AsyncSGLangModel(MODEL, {"temperature": 0.0}, **model_options()) as model:
        try:
            reply = await model.run(
                [{"role": "user", "content": f"Extract the invoice as JSON:\n{TEXT}"}],
                response_format=Invoice,
                stream=False,
            )
        except StructuredOutputError as exc:  # e.g. the reply was cut at max_tokens
            print(f"could not parse: {exc.raw!r}")
            raise
        invoice: Invoice = reply.choices[0].message.parsed  # type: ignore[attr-defined]
        print(f"parsed: {type(invoice).__name__}")
        print(invoice.model_dump_json(indent=2))


if __name__ == "__main__":
    asyncio.run(main())
