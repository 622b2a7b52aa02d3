"""loradag serve: a real uvicorn server on loopback, driven by the official `openai` client and loradag's backends.

A tiny random-init Llama with two tiny trained adapters; every served answer is checked against the chat core's
answer for the same question (what evaluate asks), so routing, prompts and decoding are all under test.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_backends import free_port

from stages import evaluate
from stages.lib import chat, serve
from stages.lib.backends import OpenAIChat, OpenAIConfig
from stages.lib.common import UserError
from stages.lib.metrics import parse_judge_score

SYSTEM = chat.DEFAULT_SYSTEM_PROMPT
MAX_TOKENS = 12
QUESTIONS = [f"What colour is the stage number {i}?" for i in range(8)]


@dataclass
class Server:
    url: str
    engine: serve.Engine

    def client(self, api_key: str = "unused") -> Any:
        from openai import OpenAI

        return OpenAI(base_url=self.url, api_key=api_key, max_retries=0, timeout=60)


@contextlib.contextmanager
def running(engine: serve.Engine, api_key: str | None = None) -> Iterator[Server]:
    """uvicorn on 127.0.0.1 and a free port, in a thread, until the block ends."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(serve.build_app(engine, SYSTEM, api_key), host="127.0.0.1", port=port, log_level="error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield Server(f"http://127.0.0.1:{port}/v1", engine)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, tiny_adapters: dict[str, Path]) -> serve.Engine:
    return serve.load_engine(tiny_model_dir, tiny_adapters, "base", max_tokens_limit=64)


@pytest.fixture(scope="module")
def server(engine: serve.Engine) -> Iterator[Server]:
    with running(engine) as live:
        yield live


def core_answers(base: Path, adapter: Path | None, questions: list[str], max_tokens: int = MAX_TOKENS) -> list[str]:
    """What the chat core answers on its own model object (base, or base + one adapter), one question at a time."""
    model, tokenizer = chat.load_for_generation(base, adapter)
    conversations = [chat.prompt_messages(question, SYSTEM) for question in questions]
    return [answer.text for answer in chat.generate(model, tokenizer, conversations, chat.Sampling(max_tokens), 1)]


def ask(client: Any, model: str, question: str, **options: Any) -> Any:
    messages = [{"role": "user", "content": question}]
    return client.chat.completions.create(model=model, messages=messages, **({"max_tokens": MAX_TOKENS} | options))


# ---------------------------------------------------------------- the OpenAI API


def test_models_lists_the_base_and_every_adapter(server: Server) -> None:
    models = server.client().models.list()
    assert [(m.id, m.owned_by) for m in models.data] == [("base", "loradag"), ("a", "loradag"), ("b", "loradag")]


def test_each_model_name_answers_as_the_chat_core_does_with_that_model(
    server: Server, tiny_model_dir: Path, tiny_adapters: dict[str, Path]
) -> None:
    client = server.client()
    served = {
        name: [ask(client, name, q).choices[0].message.content for q in QUESTIONS[:3]] for name in server.engine.names
    }
    assert served["base"] == core_answers(tiny_model_dir, None, QUESTIONS[:3])
    for name, path in tiny_adapters.items():
        assert served[name] == core_answers(tiny_model_dir, path, QUESTIONS[:3])
    assert served["a"] != served["base"] and served["b"] != served["a"]  # the request's model picks the weights


def test_a_completion_has_openais_shape_and_counts_its_tokens(server: Server, engine: serve.Engine) -> None:
    reply = ask(server.client(), "a", QUESTIONS[0])
    assert reply.object == "chat.completion" and reply.model == "a" and reply.choices[0].message.role == "assistant"
    prompt = chat.prompt_ids(engine.tokenizer, chat.prompt_messages(QUESTIONS[0], SYSTEM))
    assert reply.usage.prompt_tokens == len(prompt)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.choices[0].finish_reason == ("length" if reply.usage.completion_tokens == MAX_TOKENS else "stop")


def test_a_streamed_answer_is_the_same_answer_in_pieces(server: Server) -> None:
    client = server.client()
    for name in ("base", "a"):
        chunks = list(ask(client, name, QUESTIONS[1], stream=True))
        pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
        assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason in (
            "stop",
            "length",
        )
        assert len(pieces) > 1  # token by token, not the whole text at the end
        assert "".join(pieces).strip() == ask(client, name, QUESTIONS[1]).choices[0].message.content


def test_a_clients_own_system_prompt_is_kept(server: Server) -> None:
    messages = [{"role": "system", "content": "Reply in French."}, {"role": "user", "content": QUESTIONS[0]}]
    own = server.client().chat.completions.create(model="a", messages=messages, max_tokens=MAX_TOKENS)
    prompt = chat.prompt_ids(server.engine.tokenizer, messages)
    assert own.usage.prompt_tokens == len(prompt)


# ---------------------------------------------------------------- errors


def test_an_unknown_model_is_a_404_in_openais_shape(server: Server) -> None:
    from openai import NotFoundError

    with pytest.raises(NotFoundError) as err:
        ask(server.client(), "gpt-4o", QUESTIONS[0])
    error = err.value.body
    assert err.value.status_code == 404 and error["code"] == "model_not_found" and error["param"] == "model"
    assert set(error) == {"message", "type", "param", "code"} and "base, a, b" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b'["a list"]', None),
        (b'{"model": "a"}', "messages"),
        (b'{"model": "a", "messages": [{"role": "robot", "content": "hi"}]}', "messages[0].role"),
        (b'{"model": "a", "messages": [{"role": "user", "content": 3}]}', "messages[0].content"),
        (b'{"model": "a", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', "temperature"),
        (b'{"model": "a", "messages": [{"role": "user", "content": "hi"}], "n": 2}', "n"),
    ],
)
def test_a_malformed_body_is_a_400_naming_the_field(server: Server, body: bytes, param: str | None) -> None:
    reply = httpx.post(f"{server.url}/chat/completions", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 400
    assert reply.json()["error"]["type"] == "invalid_request_error" and reply.json()["error"]["param"] == param


def test_too_many_tokens_is_a_400_and_the_server_keeps_serving(server: Server) -> None:
    from openai import BadRequestError

    client = server.client()
    with pytest.raises(BadRequestError, match="max_tokens is too large: 65"):
        ask(client, "a", QUESTIONS[0], max_tokens=65)
    with pytest.raises(BadRequestError, match="maximum context length is 1024") as err:
        client.chat.completions.create(model="a", messages=[{"role": "user", "content": "word " * 1100}], max_tokens=8)
    assert err.value.body["code"] == "context_length_exceeded"
    with pytest.raises(BadRequestError, match="maximum context length"):  # streamed: refused before any event
        list(client.chat.completions.create(model="a", messages=[{"role": "user", "content": "word " * 1100}],
                                            max_tokens=8, stream=True))  # fmt: skip
    assert ask(client, "a", QUESTIONS[0]).choices[0].message.content is not None


def test_an_unknown_route_is_a_404_in_openais_shape(server: Server) -> None:
    reply = httpx.get(f"{server.url}/completions")
    assert reply.status_code == 404 and reply.json()["error"]["message"] == "Not Found"


def test_an_api_key_is_required_when_one_is_set(engine: serve.Engine) -> None:
    from openai import AuthenticationError

    with running(engine, api_key="s3cret-key") as server:
        for wrong in ("wrong", "s3cret-keyX"):
            with pytest.raises(AuthenticationError) as err:
                server.client(api_key=wrong).models.list()
            assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"
        anonymous = httpx.get(f"{server.url}/models")  # no Authorization header at all
        assert anonymous.status_code == 401 and "s3cret-key" not in anonymous.text
        assert [m.id for m in server.client(api_key="s3cret-key").models.list().data] == ["base", "a", "b"]


def test_the_key_comes_from_the_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORADAG_API_KEY", " k1 ")
    assert serve.api_key_from("LORADAG_API_KEY") == "k1"
    monkeypatch.delenv("LORADAG_API_KEY")
    assert serve.api_key_from("LORADAG_API_KEY") is None


def test_adapter_specs_are_name_equals_path() -> None:
    assert serve.parse_adapters(["x=models/adapter", "y=/tmp/y"], "base") == {
        "x": Path("models/adapter"),
        "y": Path("/tmp/y"),
    }
    for bad in (["models/adapter"], ["x=a", "x=b"], ["base=a"], ["=a"]):
        with pytest.raises(UserError, match="--adapter"):
            serve.parse_adapters(bad, "base")


# ---------------------------------------------------------------- concurrency


def test_concurrent_requests_get_the_answers_sequential_requests_get(server: Server) -> None:
    client = server.client()
    jobs = [(("base", "a", "b")[i % 3], QUESTIONS[i]) for i in range(8)]
    sequential = [ask(client, model, q).choices[0].message.content for model, q in jobs]

    def one(job: tuple[str, str]) -> str:
        model, question = job
        if QUESTIONS.index(question) % 2:  # streamed and plain requests interleaved on the one worker
            pieces = [c.choices[0].delta.content or "" for c in ask(client, model, question, stream=True)]
            return "".join(pieces).strip()
        return ask(client, model, question).choices[0].message.content

    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(one, jobs))
    assert concurrent == sequential


# ---------------------------------------------------------------- loradag's own openai backends against it


def backend(server: Server, model: str, tmp_path: Path, max_tokens: int) -> OpenAIChat:
    cfg = OpenAIConfig(base_url=server.url, model=model, api_key_env="", temperature=0.0, max_tokens=max_tokens)
    return OpenAIChat(cfg, tmp_path / "cache", where="generate.openai")


def test_generate_and_judge_openai_backends_get_the_chat_cores_answers(
    server: Server, tiny_model_dir: Path, tiny_adapters: dict[str, Path], tmp_path: Path
) -> None:
    conversations = [chat.prompt_messages(q, SYSTEM) for q in QUESTIONS[:4]]
    replies = backend(server, "a", tmp_path, MAX_TOKENS).chat(conversations, label="generate")
    assert replies == core_answers(tiny_model_dir, tiny_adapters["a"], QUESTIONS[:4])
    pred = {"question": QUESTIONS[0], "reference": "Stage 0 is red.", "answer": replies[0]}
    judged = backend(server, "base", tmp_path, 16).chat([evaluate.judge_conversation(pred)], label="judge")
    assert isinstance(judged[0], str) and judged[0]  # a random tiny model: a reply, rarely a score
    assert parse_judge_score(judged[0]) in (None, 0, 1, 2, 3, 4, 5)


def test_golden_the_servers_adapter_answer_is_evaluates_adapter_answer(
    server: Server, tiny_model_dir: Path, tiny_adapters: dict[str, Path], make_pairs: Any
) -> None:
    questions = make_pairs(4, start=100)
    model, tokenizer = chat.load_for_generation(tiny_model_dir, tiny_adapters["a"])
    items = evaluate.eval_items(questions)
    evaluated = evaluate.generate_answers(model, tokenizer, items, SYSTEM, MAX_TOKENS, batch_size=1)
    client = server.client()
    served = [ask(client, "a", row["question"]).choices[0].message.content for row in evaluated]
    assert served == [row["answer"] for row in evaluated]
    assert json.dumps(served)  # plain strings
