"""Tests for stages/llm.py: the openai backend against a real loopback HTTP server, the reply cache,
key hygiene, and the transformers backend on a tiny random-init model."""

import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import polars as pl
import project
import pytest
from tiny import save_tiny_llama

from stages.generate import main as generate_main
from stages.lib.backends import (
    BACKENDS,
    OpenAIChat,
    OpenAIConfig,
    TransformersChat,
    TransformersConfig,
    extract_json,
    make_backend,
)
from stages.lib.common import UserError
from stages.lib.params import ConfigError, from_dict

Respond = Callable[[dict, int], tuple[int, Any]]  # (request body, call number) -> (status, reply body)


@dataclass
class FakeServer:
    url: str
    respond: Respond
    calls: list[dict] = field(default_factory=list)  # {"auth": header or None, "body": request JSON}
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        fake: FakeServer = self.server.fake  # type: ignore[attr-defined]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with fake.lock:
            fake.calls.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            number = len(fake.calls)
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
        try:
            status, reply = fake.respond(body, number)
        finally:
            with fake.lock:
                fake.in_flight -= 1
        data = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def serve() -> Iterator[Callable[[Respond], FakeServer]]:
    servers = []

    def start(respond: Respond) -> FakeServer:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.fake = FakeServer(f"http://127.0.0.1:{httpd.server_port}/v1", respond)  # type: ignore[attr-defined]
        threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True).start()
        servers.append(httpd)
        return httpd.fake  # type: ignore[attr-defined]

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def completion(content: str) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}


def echo(body: dict, number: int) -> tuple[int, Any]:
    return 200, completion("echo: " + body["messages"][-1]["content"])


def conversations(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"prompt {i}"}] for i in range(n)]


def backend(url: str, cache: Path, **overrides: Any) -> OpenAIChat:
    cfg = OpenAIConfig(**({"base_url": url, "model": "test-model", "api_key_env": "LORADAG_TEST_KEY"} | overrides))
    return OpenAIChat(cfg, cache, where="generate.openai", backoff_s=0.001)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- openai -------------------------------------------------------------------------------------------


def test_openai_returns_one_reply_per_conversation_in_order(serve, tmp_path: Path) -> None:
    server = serve(echo)
    replies = backend(server.url, tmp_path, concurrency=3).chat(conversations(7), "test")
    assert replies == [f"echo: prompt {i}" for i in range(7)]
    assert len(server.calls) == 7 and server.calls[0]["path"] == "/v1/chat/completions"
    sent = server.calls[0]["body"]
    assert (sent["model"], sent["temperature"], sent["max_tokens"]) == ("test-model", 0.25, 1024)


def test_openai_sends_concurrent_requests(serve, tmp_path: Path) -> None:
    def slow(body: dict, number: int) -> tuple[int, Any]:
        time.sleep(0.05)
        return echo(body, number)

    server = serve(slow)
    backend(server.url, tmp_path, concurrency=4).chat(conversations(8), "test")
    assert 2 <= server.max_in_flight <= 4


def test_openai_retries_500s_then_succeeds(serve, tmp_path: Path) -> None:
    server = serve(lambda body, n: (500, {"error": {"message": "overloaded"}}) if n <= 2 else echo(body, n))
    replies = backend(server.url, tmp_path, concurrency=1, retries=4).chat(conversations(1), "test")
    assert replies == ["echo: prompt 0"]
    assert len(server.calls) == 3


def test_openai_retries_429_until_retries_run_out(serve, tmp_path: Path) -> None:
    server = serve(lambda body, n: (429, {"error": {"message": "slow down"}}))
    with pytest.raises(UserError, match="after 3 attempts"):
        backend(server.url, tmp_path, concurrency=1, retries=2).chat(conversations(1), "test")
    assert len(server.calls) == 3


def test_openai_client_error_fails_at_once_with_the_servers_message(serve, tmp_path: Path) -> None:
    server = serve(lambda body, n: (404, {"error": {"message": "model 'test-model' does not exist"}}))
    with pytest.raises(UserError) as err:
        backend(server.url, tmp_path, concurrency=1, retries=4).chat(conversations(3), "test")
    assert "HTTP 404: model 'test-model' does not exist" in str(err.value)
    assert "generate.openai.model" in str(err.value)
    assert len(server.calls) == 1


def test_openai_server_down_names_the_url_and_what_to_check(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(UserError) as err:
        backend(url, tmp_path, retries=2).chat(conversations(2), "test")
    message = str(err.value)
    assert f"{url}/chat/completions" in message and "after 3 attempts" in message
    assert "Is the server up?" in message and "`generate.openai.base_url`" in message
    assert "$LORADAG_TEST_KEY" in message


def test_openai_reply_that_is_not_a_chat_completion_is_none_and_not_cached(serve, tmp_path: Path) -> None:
    server = serve(lambda body, n: (200, b"<html>proxy login</html>") if n == 1 else (200, {"choices": []}))
    chat = backend(server.url, tmp_path, concurrency=1)
    assert chat.chat(conversations(2), "test") == [None, None]
    assert not list(tmp_path.rglob("*.json"))


def test_malformed_replies_are_counted_and_dropped_by_generate(
    serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = {p: json.dumps({"pairs": [{"question": f"What is {p}?", "answer": p}]}) for p in "ab"}
    replies = {
        "a": good["a"],
        "b": f"```json\n{good['b']}\n```",
        "c": "Sure! Here are your pairs.",
        "d": '{"pair": []}',
    }

    def respond(body: dict, number: int) -> tuple[int, Any]:
        passage = re.search(r"<(passage-[0-9a-f]+)>\n(.*)\n</\1>$", body["messages"][-1]["content"], re.S)[2]
        return 200, completion(replies[passage])

    server = serve(respond)
    metrics = run_generate_stage(tmp_path, monkeypatch, server.url, texts=list(replies))
    pairs = pl.read_parquet(tmp_path / "data" / "generate" / "pairs.parquet")
    assert pairs["context"].to_list() == ["a", "b"]
    assert set(pairs["generator"]) == {"openai:test-model"}
    assert (metrics["dropped_malformed"], metrics["pairs"], metrics["cache_misses"]) == (2, 2, 4)


def test_a_run_where_every_reply_is_malformed_fails_and_writes_nothing(
    serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(lambda body, n: (200, completion("The answer to your question is:\n\n" * 20)))
    with pytest.raises(UserError, match="no pairs from 2 chunks"):
        run_generate_stage(tmp_path, monkeypatch, server.url, texts=["one", "two"])
    assert not (tmp_path / "data" / "generate").exists()
    assert not list((tmp_path / ".cache" / "generate").rglob("*.json"))  # a rerun asks again


def test_a_malformed_reply_is_not_cached_so_a_rerun_after_a_fix_asks_again(
    serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = json.dumps({"pairs": [{"question": "What follows hello?", "answer": "world"}]})
    server = serve(lambda body, n: (200, completion("Sorry, I cannot help." if n == 1 else good)))
    with pytest.raises(UserError, match="no pairs from 1 chunks"):
        run_generate_stage(tmp_path, monkeypatch, server.url, texts=["hello world"])
    generate_main(tmp_path / "params.yaml")
    metrics = json.loads((tmp_path / "metrics" / "all" / "generate.json").read_text())
    assert len(server.calls) == 2
    assert (metrics["pairs"], metrics["dropped_malformed"], metrics["cache_misses"]) == (1, 0, 1)


# --- cache --------------------------------------------------------------------------------------------


def test_a_rerun_after_a_failed_run_only_asks_for_the_missing_replies(serve, tmp_path: Path) -> None:
    down = threading.Event()  # one server (the endpoint is part of the cache key) that goes down, then comes back

    def respond(body: dict, number: int) -> tuple[int, Any]:
        if number == 3:
            down.set()
        return (503, {"error": "down"}) if down.is_set() else echo(body, number)

    server = serve(respond)
    with pytest.raises(UserError, match="rerun to resume"):
        backend(server.url, tmp_path, concurrency=1, retries=1).chat(conversations(5), "test")
    assert len(list(tmp_path.rglob("*.json"))) == 2 and len(server.calls) == 4

    down.clear()
    chat = backend(server.url, tmp_path, concurrency=1)
    replies = chat.chat(conversations(5), "test")
    assert replies == [f"echo: prompt {i}" for i in range(5)]
    assert len(server.calls) == 7 and (chat.cache_hits, chat.cache_misses) == (2, 3)
    assert [c["body"]["messages"][0]["content"] for c in server.calls[4:]] == ["prompt 2", "prompt 3", "prompt 4"]

    down.set()
    again = backend(server.url, tmp_path, concurrency=1)
    assert again.chat(conversations(5), "test") == replies
    assert len(server.calls) == 7 and again.cache_hits == 5


def test_two_runs_on_one_cache_ask_for_each_reply_once(serve, tmp_path: Path) -> None:
    def slow(body: dict, number: int) -> tuple[int, Any]:
        time.sleep(0.1)  # long enough that the second run starts while the first is still asking
        return echo(body, number)

    server = serve(slow)
    runs = [backend(server.url, tmp_path, concurrency=2) for _ in range(2)]
    results: list[list[str | None]] = [[], []]

    def run(k: int) -> None:
        results[k] = runs[k].chat(conversations(4), f"run {k}")

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    asked = Counter(c["body"]["messages"][0]["content"] for c in server.calls)
    assert asked == {f"prompt {i}": 1 for i in range(4)}
    assert results[0] == results[1] == [f"echo: prompt {i}" for i in range(4)]
    assert sorted(r.cache_hits for r in runs) == [0, 4]


def test_the_endpoint_is_part_of_the_cache_key(serve, tmp_path: Path) -> None:
    first, second = serve(echo), serve(echo)
    backend(first.url, tmp_path).chat(conversations(2), "test")
    backend(second.url, tmp_path).chat(conversations(2), "test")
    backend(second.url + "/", tmp_path).chat(conversations(2), "test")  # the same endpoint
    assert (len(first.calls), len(second.calls)) == (2, 2)


def test_sampling_params_are_part_of_the_cache_key(serve, tmp_path: Path) -> None:
    server = serve(echo)
    backend(server.url, tmp_path, temperature=0.25).chat(conversations(2), "test")
    backend(server.url, tmp_path, temperature=0.7).chat(conversations(2), "test")
    backend(server.url, tmp_path, temperature=0.7, base_url=server.url + "/").chat(conversations(2), "test")
    assert len(server.calls) == 4


# --- key hygiene --------------------------------------------------------------------------------------


def run_generate_stage(root: Path, monkeypatch: pytest.MonkeyPatch, url: str, texts: list[str]) -> dict:
    openai = {"base_url": url, "model": "test-model", "api_key_env": "LORADAG_TEST_KEY", "retries": 0}
    return project.run_generate_stage(root, monkeypatch, openai, texts, pairs_per_chunk=3)


def test_the_api_key_is_sent_but_never_written_anywhere(serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-loradag-test-7f3a9c1e5b"
    monkeypatch.setenv("LORADAG_TEST_KEY", secret)

    def respond(body: dict, number: int) -> tuple[int, Any]:
        question = "What follows hello in " + body["messages"][-1]["content"][-20:] + "?"
        return 200, completion(json.dumps({"pairs": [{"question": question, "answer": "hello"}]}))

    server = serve(respond)
    metrics = run_generate_stage(tmp_path, monkeypatch, server.url, texts=["hello world", "hello again"])
    assert metrics["pairs"] == 2
    assert {c["auth"] for c in server.calls} == {f"Bearer {secret}"}
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(list((tmp_path / ".cache" / "generate").rglob("*.json"))) == 2
    assert any(p.suffix == ".parquet" for p in written) and any(p.name == "generate.json" for p in written)
    for path in written:
        assert secret.encode() not in path.read_bytes(), path


def test_no_key_in_the_environment_sends_no_authorization_header(
    serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LORADAG_TEST_KEY", raising=False)
    server = serve(echo)
    backend(server.url, tmp_path).chat(conversations(1), "test")
    assert server.calls[0]["auth"] is None


@pytest.mark.parametrize(
    "pasted",
    [
        "hf_AbCdEfGhIjKlMnOpQrStUvWxYz123456",
        "sk_live_51HqLyjWDarjtT1zdp7dc",
        "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
        "AKIAIOSFODNN7EXAMPLE",
        "AIzaSyDdI0hCZtE6vySjMm_WEfRq3CPzqKqqsHI",
        "gsk_Wq7RtY2uI9oP4aS6dF1g",
        "q8Xk2LmP9vR4tZ7wY1nB5cD3",  # no known prefix, but long and mixed like a key
    ],
)
def test_a_key_pasted_into_api_key_env_is_rejected_without_echoing_it(pasted: str) -> None:
    with pytest.raises(ConfigError, match=r"generate\.openai\.api_key_env looks like a key") as err:
        from_dict(OpenAIConfig, {"api_key_env": pasted}, "generate.openai")
    assert pasted not in str(err.value)


def test_a_dashed_key_in_api_key_env_is_rejected_without_echoing_it() -> None:
    with pytest.raises(ConfigError, match=r"generate\.openai\.api_key_env must be the NAME") as err:
        from_dict(OpenAIConfig, {"api_key_env": "sk-proj-Ab12Cd34Ef56"}, "generate.openai")
    assert "sk-proj" not in str(err.value)


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "HF_TOKEN", "MY_KEY_2", "LORADAG_TEST_KEY", "skip_key", ""])
def test_conventional_variable_names_are_accepted_as_api_key_env(name: str) -> None:
    assert from_dict(OpenAIConfig, {"api_key_env": name}, "generate.openai").api_key_env == name


def test_a_key_the_server_echoes_in_its_401_is_not_in_the_error(
    serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-loradag-test-7f3a9c1e5b"
    monkeypatch.setenv("LORADAG_TEST_KEY", secret)

    def reject(body: dict, number: int) -> tuple[int, Any]:
        return 401, {"error": {"message": f"Incorrect API key provided: {secret}"}}

    server = serve(reject)
    with pytest.raises(UserError) as err:
        backend(server.url, tmp_path, concurrency=1).chat(conversations(1), "test")
    assert secret not in str(err.value)
    assert "Incorrect API key provided: $LORADAG_TEST_KEY" in str(err.value)


def test_a_key_echoed_in_retried_5xx_replies_is_not_in_the_error(
    serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-loradag-test-7f3a9c1e5b"
    monkeypatch.setenv("LORADAG_TEST_KEY", secret)
    server = serve(lambda body, n: (503, {"error": {"message": f"upstream rejected {secret}"}}))
    with pytest.raises(UserError, match="after 2 attempts") as err:
        backend(server.url, tmp_path, concurrency=1, retries=1).chat(conversations(1), "test")
    assert secret not in str(err.value) and "$LORADAG_TEST_KEY" in str(err.value)


# --- helpers ------------------------------------------------------------------------------------------


def test_extract_json_reads_bare_fenced_and_wrapped_json() -> None:
    assert extract_json('{"a": 1}') == {"a": 1}
    assert extract_json('```json\n{"a": 1}\n```') == {"a": 1}
    assert extract_json('Here you go: {"a": 1} Enjoy.') == {"a": 1}
    assert extract_json("no json here") is None


def test_registry_builds_each_backend_from_its_own_subsection(tmp_path: Path) -> None:
    section = {"backend": "openai", "openai": {"model": "m"}, "transformers": {"model_path": "models/x"}}
    configs = {name: from_dict(spec.config, section[name], f"generate.{name}") for name, spec in BACKENDS.items()}
    openai = make_backend("openai", configs, tmp_path, "evaluate.judge")
    local = make_backend("transformers", configs, tmp_path, "generate")
    assert (openai.name, local.name) == ("openai:m", "transformers:models/x")
    assert (openai.where, local.where) == ("evaluate.judge.openai", "generate.transformers")


def test_a_bad_backend_key_is_named_with_its_section() -> None:
    with pytest.raises(ConfigError, match=r"evaluate\.judge\.openai\.temperature must be in \[0, 2\]"):
        from_dict(OpenAIConfig, {"temperature": 3}, "evaluate.judge.openai")
    with pytest.raises(ConfigError, match=r"generate\.transformers\.nope is not a known key"):
        from_dict(TransformersConfig, {"nope": 1}, "generate.transformers")


# --- transformers -------------------------------------------------------------------------------------

WORDS = "system user assistant the stage writes pairs from each chunk of text a passage question answer".split()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Llama with a word-level ChatML tokenizer: builds offline in well under a second."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from stages.lib.chat import CHATML_TEMPLATE

    specials = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>"]
    words = Tokenizer(models.WordLevel(unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(special_tokens=specials))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="<|im_end|>",
        chat_template=CHATML_TEMPLATE,
    )
    # a large init so replies differ from prompt to prompt
    path = tmp_path_factory.mktemp("tiny-llama")
    return save_tiny_llama(path, tokenizer, hidden_size=32, max_position_embeddings=256, initializer_range=0.5)


def varied_conversations(n: int) -> list[list[dict[str, str]]]:
    return [
        [{"role": "user", "content": " ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(2 + 3 * i))}]
        for i in range(n)
    ]


def test_transformers_batched_replies_match_one_by_one(tiny_model: Path, tmp_path: Path) -> None:
    convs = varied_conversations(5)
    cfg = TransformersConfig(model_path=str(tiny_model), batch_size=3, max_new_tokens=6)
    batched = TransformersChat(cfg, tmp_path / "a", "generate.transformers").chat(convs, "test")
    single = TransformersChat(TransformersConfig(str(tiny_model), 1, 6), tmp_path / "b", "g").chat(convs, "test")
    assert len(batched) == 5 and all(isinstance(r, str) for r in batched)
    assert batched == single  # left padding does not change what a prompt gets
    assert len(set(batched)) > 1
    assert all(len(r.split()) <= 6 for r in batched)


def test_transformers_rerun_comes_from_the_cache_without_loading_the_model(tiny_model: Path, tmp_path: Path) -> None:
    cfg = TransformersConfig(model_path=str(tiny_model), batch_size=2, max_new_tokens=4)
    first = TransformersChat(cfg, tmp_path, "generate.transformers").chat(varied_conversations(3), "test")
    again = TransformersChat(cfg, tmp_path, "generate.transformers")
    assert again.chat(varied_conversations(3), "test") == first
    assert (again.cache_hits, again.cache_misses, again._loaded) == (3, 0, None)


def test_transformers_missing_model_folder_says_to_run_the_model_stage(tmp_path: Path) -> None:
    chat = TransformersChat(TransformersConfig(model_path=str(tmp_path / "nope")), tmp_path, "generate.transformers")
    with pytest.raises(UserError, match="generate.transformers.model_path: .* run `loradag model`"):
        chat.chat(conversations(1), "test")
