"""`loradag serve`: an OpenAI-compatible HTTP server for the base model and any number of LoRA adapters.

    loradag serve --adapter adapter=models/adapter --port 8000
    curl localhost:8000/v1/chat/completions -d '{"model": "adapter", "messages": [{"role": "user", "content": "..."}]}'

`GET /v1/models` and `POST /v1/chat/completions` (with `"stream": true` as server-sent events). The base is
loaded once; each `--adapter name=path` is loaded onto it (vLLM's `--lora-modules` semantics) and a request
picks the base or an adapter by its `model` name. One model object serves every request, so generation runs on
a single worker thread, in arrival order; the web loop stays free to take requests meanwhile. Prompts and
decoding are the chat core's (stages/lib/chat.py): a request without a system message is asked with the
training system prompt, and `temperature` defaults to 0 (greedy, as evaluate answers). Errors are OpenAI's
JSON shape, {"error": {"message", "type", "param", "code"}}; a request never takes the server down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI
from fastapi import Request as HttpRequest  # at module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from stages.lib import chat
from stages.lib.common import UserError, log
from stages.lib.params import load_params

DEFAULT_MAX_TOKENS = 256


class RequestError(Exception):
    """A request the server answers with an OpenAI-style error instead of a completion."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass(frozen=True)
class Request:
    """What one chat completion asks for, checked: the model's name, the conversation and the decoding."""

    model: str
    messages: chat.Conversation
    sampling: chat.Sampling
    stream: bool


class Engine:
    """The loaded base (+ adapters) and the one worker thread that generates with it."""

    def __init__(self, model: Any, tokenizer: Any, base_name: str, adapters: list[str], max_tokens_limit: int) -> None:
        self.model, self.tokenizer, self.base_name = model, tokenizer, base_name
        self.names = [base_name, *adapters]
        self.max_tokens_limit = max_tokens_limit
        self.context = getattr(model.config, "max_position_embeddings", None)
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loradag-generate")

    @contextlib.contextmanager
    def using(self, name: str) -> Iterator[None]:
        """Route generation to the base (LoRA off) or to one adapter; worker thread only."""
        if name == self.base_name:
            disable = getattr(self.model, "disable_adapter", None)
            with disable() if disable is not None else contextlib.nullcontext():
                yield
        else:
            self.model.set_adapter(name)
            yield

    def prompt_tokens(self, request: Request) -> int:
        """Prompt length; a prompt that leaves no room for `max_tokens` in the model's context is a 400."""
        length = len(chat.prompt_ids(self.tokenizer, request.messages))
        if self.context is not None and length + request.sampling.max_new_tokens > self.context:
            raise RequestError(
                400,
                f"This model's maximum context length is {self.context} tokens. However, you requested "
                f"{length + request.sampling.max_new_tokens} tokens ({length} in the messages, "
                f"{request.sampling.max_new_tokens} in the completion). Please reduce the length of the messages "
                "or completion.",
                "messages",
                "context_length_exceeded",
            )
        return length

    def complete(self, request: Request) -> tuple[chat.Answer, int]:
        """(answer, prompt tokens), generated on the worker thread."""
        prompt = self.prompt_tokens(request)
        with self.using(request.model):
            answer = next(chat.generate(self.model, self.tokenizer, [request.messages], request.sampling, 1))
        return answer, prompt

    def pieces(self, request: Request, emit: Any) -> None:
        """Stream one answer into `emit(kind, value)`: ("prompt", n), ("piece", text)..., ("end", answer tokens)."""
        try:
            emit("prompt", self.prompt_tokens(request))
            text = ""
            with self.using(request.model):
                for piece in chat.stream(self.model, self.tokenizer, request.messages, request.sampling):
                    text += piece
                    emit("piece", piece)
            emit("end", len(self.tokenizer(text, add_special_tokens=False)["input_ids"]))
        except Exception as err:  # handed to the request's coroutine, which answers with it
            emit("error", err)


# ---------------------------------------------------------------- requests


def text_content(content: Any, where: str) -> str:
    """A message's content: a string, or OpenAI's list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(part.get("text", "")) for part in content)
    raise RequestError(400, f"{where} must be a string or a list of text parts", where, "invalid_type")


def parse_request(body: Any, engine: Engine, system_prompt: str) -> Request:
    """A /v1/chat/completions body, checked as OpenAI checks it (400 for a bad field, 404 for an unknown model)."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object", None, "invalid_request")
    model = body.get("model")
    if not isinstance(model, str):
        raise RequestError(400, "you must provide a model parameter", "model", "missing_required_parameter")
    if model not in engine.names:
        raise RequestError(
            404, f"The model `{model}` does not exist. Served: {', '.join(engine.names)}.", "model", "model_not_found"
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages must be a non-empty list", "messages", "invalid_type")
    conversation = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "developer", "user", "assistant"):
            raise RequestError(
                400, f"messages[{i}] needs a role: system, user or assistant", f"messages[{i}].role", "invalid_value"
            )
        role = "system" if message["role"] == "developer" else message["role"]
        conversation.append({"role": role, "content": text_content(message.get("content"), f"messages[{i}].content")})
    return Request(model, chat.with_system_prompt(conversation, system_prompt), sampling(body, engine), stream(body))


def sampling(body: dict[str, Any], engine: Engine) -> chat.Sampling:
    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    tokens = min(DEFAULT_MAX_TOKENS, engine.max_tokens_limit) if tokens is None else tokens
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise RequestError(400, f"max_tokens must be an integer >= 1, got {tokens!r}", "max_tokens", "invalid_value")
    if tokens > engine.max_tokens_limit:
        raise RequestError(
            400,
            f"max_tokens is too large: {tokens}. This server allows at most "
            f"{engine.max_tokens_limit} (loradag serve --max-tokens-limit).",
            "max_tokens",
            "invalid_value",
        )
    temperature = body.get("temperature", 0.0)
    temperature = 0.0 if temperature is None else temperature
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
        raise RequestError(
            400, f"temperature must be a number in [0, 2], got {temperature!r}", "temperature", "invalid_value"
        )
    if body.get("n", 1) not in (1, None):
        raise RequestError(400, "this server answers one choice per request (n=1)", "n", "invalid_value")
    seed = body.get("seed") or 0
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RequestError(400, f"seed must be an integer, got {seed!r}", "seed", "invalid_type")
    return chat.Sampling(max_new_tokens=tokens, temperature=float(temperature), seed=seed)


def stream(body: dict[str, Any]) -> bool:
    value = body.get("stream", False)
    if not isinstance(value, bool) and value is not None:
        raise RequestError(400, f"stream must be true or false, got {value!r}", "stream", "invalid_type")
    return bool(value)


# ---------------------------------------------------------------- replies


def completion(request: Request, answer: chat.Answer, prompt_tokens: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": finish_reason(answer.tokens, request),
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": answer.tokens,
            "total_tokens": prompt_tokens + answer.tokens,
        },
    }


def finish_reason(tokens: int, request: Request) -> Literal["stop", "length"]:
    return "length" if tokens >= request.sampling.max_new_tokens else "stop"


def chunk(chunk_id: str, request: Request, delta: dict[str, Any], finish: str | None = None) -> str:
    body = {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": request.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    return f"data: {json.dumps(body)}\n\n"


async def events(request: Request, queue: asyncio.Queue[tuple[str, Any]]) -> AsyncIterator[str]:
    """Server-sent events: the role, the text as the model writes it (leading space trimmed), the finish reason."""
    chunk_id, text = f"chatcmpl-{uuid.uuid4().hex}", ""
    yield chunk(chunk_id, request, {"role": "assistant", "content": ""})
    while True:
        kind, value = await queue.get()
        if kind == "error":
            yield f"data: {json.dumps(error_body(str(value), 'server_error'))}\n\n"
            return
        if kind == "end":
            yield chunk(chunk_id, request, {}, finish_reason(value, request))
            yield "data: [DONE]\n\n"
            return
        delta = value.lstrip() if not text else value
        text += value
        if delta:
            yield chunk(chunk_id, request, {"content": delta})


# ---------------------------------------------------------------- the app


def build_app(engine: Engine, system_prompt: str, api_key: str | None) -> FastAPI:
    """The FastAPI app: /v1/models and /v1/chat/completions, OpenAI errors, the API key when one is set."""
    app = FastAPI(title="loradag serve", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestError)
    async def request_error(_: HttpRequest, err: RequestError) -> JSONResponse:
        kinds = {401: "authentication_error", 404: "invalid_request_error"}
        body = error_body(err.message, kinds.get(err.status, "invalid_request_error"), err.param, err.code)
        return JSONResponse(body, status_code=err.status)

    @app.exception_handler(HTTPException)
    async def http_error(_: HttpRequest, err: HTTPException) -> JSONResponse:  # unknown route, wrong method
        return JSONResponse(error_body(str(err.detail), "invalid_request_error"), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def server_error(_: HttpRequest, err: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"the server failed: {err}", "server_error"), status_code=500)

    @app.middleware("http")
    async def check_key(request: HttpRequest, call_next: Any) -> Any:
        if api_key is not None and not authorized(request.headers.get("authorization", ""), api_key):
            body = error_body(
                "Incorrect API key provided: pass it as `Authorization: Bearer <key>`.",
                "invalid_request_error",
                None,
                "invalid_api_key",
            )
            return JSONResponse(body, status_code=401)
        return await call_next(request)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        cards = [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "loradag",
                "root": name,
                "parent": None if name == engine.base_name else engine.base_name,
            }
            for name in engine.names
        ]
        return {"object": "list", "data": cards}

    @app.post("/v1/chat/completions")
    async def completions(http: HttpRequest) -> Any:
        try:
            body = json.loads(await http.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RequestError(400, f"the body is not valid JSON: {err}", None, "invalid_json") from err
        request = parse_request(body, engine, system_prompt)
        loop = asyncio.get_running_loop()
        if not request.stream:
            answer, prompt = await loop.run_in_executor(engine.worker, engine.complete, request)
            return completion(request, answer, prompt)
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def emit(kind: str, value: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

        loop.run_in_executor(engine.worker, engine.pieces, request, emit)
        kind, value = await queue.get()  # the prompt's length, or the error that stopped it before any text
        if kind == "error":
            raise value
        return StreamingResponse(events(request, queue), media_type="text/event-stream")

    return app


def authorized(header: str, api_key: str) -> bool:
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), api_key.encode())


# ---------------------------------------------------------------- loading and running


def parse_adapters(specs: list[str], base_name: str) -> dict[str, Path]:
    """`name=path` pairs (vLLM's `--lora-modules`), each name once and none the base's."""
    adapters: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UserError(f"--adapter {spec!r}: write it as name=path, like adapter=models/adapter")
        if name in adapters or name == base_name:
            raise UserError(f"--adapter {spec!r}: the name {name!r} is taken (base: {base_name!r})")
        adapters[name] = Path(path)
    return adapters


def load_engine(
    base: Path, adapters: dict[str, Path], base_name: str, max_tokens_limit: int, chat_template: str = "model"
) -> Engine:
    """The base once, on the best device, with every adapter loaded onto it; prompts in `train.chat_template`."""
    model, tokenizer = chat.load_for_generation(base, chat_template=chat_template)
    if adapters:
        model = chat.load_adapters(model, adapters)
    return Engine(model, tokenizer, base_name, list(adapters), max_tokens_limit)


def training_system_prompt(params: Path) -> str:
    """`train.system_prompt`: what a request without a system message is asked with."""
    return chat.system_prompt(load_params(params))


def training_chat_template(params: Path) -> str:
    """`train.chat_template`: the template requests are rendered with, as training rendered its examples."""
    return chat.chat_template(load_params(params))


def api_key_from(env_name: str) -> str | None:
    """The key clients must send, from the variable named `env_name`; none (an open server) when it is unset."""
    key = os.environ.get(env_name, "").strip()
    return key or None


def run(engine: Engine, system_prompt: str, api_key: str | None, host: str, port: int) -> None:
    import uvicorn

    auth = "an API key required" if api_key else "no API key"
    log.info("serve: %s on http://%s:%d/v1 (%s)", ", ".join(engine.names), host, port, auth)
    uvicorn.run(build_app(engine, system_prompt, api_key), host=host, port=port, log_level="info")
