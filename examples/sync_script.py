"""A plain blocking script: ``SGLangModel`` (CAMEL's API) as a context manager.

No ``async`` anywhere: the model runs its event loop in a background thread, so this also
works inside a Jupyter cell or any code that cannot ``await``.

Run it anywhere: ``python examples/sync_script.py``. Without a GPU it launches the CPU stand-in
server; set ``SGLANG_URL`` (and ``SGLANG_API_KEY``) to use a running server, or run it on a GPU
machine with SGLang installed to launch the real thing (``SGLANG_MODEL`` picks the model;
``SGLANG_BACKEND_STANDIN=1`` forces the stand-in).
"""

from __future__ import annotations

from _where import MODEL, model_options

from sglang_backend import SGLangModel


def main() -> None:
    messages = [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Give me one tip for writing clear Python."},
    ]
    with SGLangModel(MODEL, {"temperature": 0.2, "max_tokens": 64}, **model_options()) as model:
        prompt_tokens = model.token_counter.count_tokens_from_messages(messages)
        print(f"prompt tokens: {prompt_tokens}")
        reply = model.run(messages)
        print(f"reply: {reply.choices[0].message.content}")  # type: ignore[union-attr]
        print(f"server: {model.base_url} (state {model.state.value})")
    print(f"after the with block: state {model.state.value}")


if __name__ == "__main__":
    main()
