"""Request shapes shared by the chat tests and the real-SGLang request checks."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

HELLO = [{"role": "user", "content": "Hello there"}]

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}


class Address(BaseModel):
    street: str
    city: str
    zip_code: str


class Person(BaseModel):
    """A nested structured-output target: lists, dicts, enums, bounds, optional fields."""

    name: str
    age: int = Field(ge=0, le=150)
    email: str | None = None
    role: Literal["admin", "user", "guest"]
    addresses: list[Address]
    scores: dict[str, float]
    active: bool
