"""Chat backends shared by `generate` (pair writing) and `evaluate` (LLM judge), with an on-disk reply cache.

    cfg = config_with_backends(GenerateConfig, params["generate"], "generate")  # cfg.backends["openai"], ...
    backend = make_backend(cfg.backend, cfg.backends, Path(cfg.cache_dir), where="generate")
    replies = backend.chat(conversations, label="generate")  # one str | None per conversation

A backend is one entry of `BACKENDS` (name -> config dataclass, implementation): add one there and it is
a valid `generate.backend` and `evaluate.judge.backend`, configured by the params subsection of its name.

- `openai`: any OpenAI-compatible `/v1/chat/completions` server (vLLM, Ollama, llama.cpp, a hosted API), via
  httpx with `concurrency` parallel requests. Retries follow the OpenAI Python SDK: connection errors, dropped
  replies, attempts past `timeout_s` (a deadline for the whole attempt, however slowly the server sends), 408,
  409, 429 and 5xx are retried, other 4xx fail at once, and a server's `x-should-retry: true|false` wins. The wait
  is the server's `retry-after-ms` / `Retry-After` (seconds or an HTTP date) when that is in (0, 60] s, else
  exponential backoff with jitter; a server asking for more than 60 s fails the run at once. The API key comes
  from the environment variable NAMED by `api_key_env` and never reaches params, logs, the cache or any output.
- `transformers`: a local HF model folder, answered through the chat core (stages/lib/chat.py).

Every reply is cached under `cache_dir`, keyed by sha256 of json(backend, endpoint (openai: `base_url` without
a trailing slash), model, messages, sampling params): one small JSON file per reply, written atomically as it
arrives, so an interrupted run resumes where it stopped and a rerun with identical inputs gets identical replies.
A run with replies to ask for holds the cache folder's lock (`.lock`), so two runs on one cache do not both ask.
`None` means the server's reply had no text; it is not cached, and the caller counts it. Neither is a reply the
caller's `accept` rejects (generate: not {"pairs": [...]} JSON), so a rerun after fixing the server asks again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import json
import math
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from stages.lib.common import UserError, log, sha256_bytes, sha256_tree, write_json
from stages.lib.params import ConfigError, from_dict, require

Conversation = list[dict[str, str]]
OnReply = Callable[[int, str | None], None]

T = TypeVar("T")

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# How pasted keys start (OpenAI, Hugging Face, GitHub, Slack, AWS, Google, GitLab, Anthropic, Groq, Replicate):
# such a value in `api_key_env` is the key itself, and it would land in dvc.lock and in error messages.
SECRET_PREFIXES = ("sk-", "sk_", "hf_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xoxb-", "xoxp-")
SECRET_PREFIXES += ("AKIA", "ASIA", "AIza", "glpat-", "gsk_", "r8_")
FENCE = re.compile(r"^```[\w-]*\s*\n(.*?)\n?```\s*$", re.S)
CHECK_TIMEOUT_S = 10.0  # an endpoint that takes longer to list its models is as good as down
MAX_RETRY_AFTER_S = 60.0  # the OpenAI SDK's limit: a server asking for a longer wait fails the run instead of hanging


@dataclass(frozen=True)
class OpenAIConfig:
    """An OpenAI-compatible endpoint; `from_dict` calls `check(where)` so errors name the full key."""

    base_url: str = "http://localhost:8000/v1"
    model: str = "meta-llama/Llama-3.1-8B-Instruct"
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.25
    max_tokens: int = 1024
    concurrency: int = 4
    timeout_s: float = 60.0
    retries: int = 4

    def check(self, where: str) -> None:
        require(
            self.base_url.startswith(("http://", "https://")),
            f"{where}.base_url",
            f"must start with http:// or https://, got {self.base_url!r}",
        )
        require(bool(self.model.strip()), f"{where}.model", "must not be empty")
        require(
            self.api_key_env == "" or ENV_NAME.fullmatch(self.api_key_env) is not None,
            f"{where}.api_key_env",
            "must be the NAME of an environment variable (like OPENAI_API_KEY), never the key itself",
        )
        require(  # the value is not repeated: it would print the key
            not looks_like_secret(self.api_key_env),
            f"{where}.api_key_env",
            "looks like a key, not the NAME of an environment variable: put the key in a variable (like "
            "OPENAI_API_KEY), name that here, take the key out of params.yaml and dvc.lock, and revoke it",
        )
        require(0 <= self.temperature <= 2, f"{where}.temperature", f"must be in [0, 2], got {self.temperature}")
        require(self.max_tokens >= 1, f"{where}.max_tokens", f"must be >= 1, got {self.max_tokens}")
        require(1 <= self.concurrency <= 64, f"{where}.concurrency", f"must be in [1, 64], got {self.concurrency}")
        require(  # a deadline, so finite
            0 < self.timeout_s < math.inf, f"{where}.timeout_s", f"must be a number > 0, got {self.timeout_s}"
        )
        require(self.retries >= 0, f"{where}.retries", f"must be >= 0, got {self.retries}")


@dataclass(frozen=True)
class TransformersConfig:
    """A local HF model folder; `from_dict` calls `check(where)` so errors name the full key."""

    model_path: str = "models/base"
    batch_size: int = 4
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy

    def check(self, where: str) -> None:
        require(bool(self.model_path.strip()), f"{where}.model_path", "must not be empty")
        require(self.batch_size >= 1, f"{where}.batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.max_new_tokens >= 1, f"{where}.max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        require(0 <= self.temperature <= 2, f"{where}.temperature", f"must be in [0, 2], got {self.temperature}")


def looks_like_secret(value: str) -> bool:
    """A known key prefix, or 20+ characters mixing upper case, lower case and digits: a key, not a variable name."""
    if value.startswith(SECRET_PREFIXES):
        return True
    mixed = any(c.isupper() for c in value) and any(c.islower() for c in value) and any(c.isdigit() for c in value)
    return len(value) >= 20 and mixed


def extract_json(reply: str) -> Any | None:
    """The JSON value in a model reply (bare, in a ```json fence, or the outermost {...}); None if there is none."""
    text = reply.strip()
    fenced = FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    for candidate in (text, text[text.find("{") : text.rfind("}") + 1]):
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    return None


# ---------------------------------------------------------------- cache + backend protocol


class ReplyCache:
    """One JSON file per reply under `root`, named by the sha256 of what produced it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))["reply"]
        except (ValueError, KeyError, TypeError):
            log.warning("llm: ignoring unreadable cache file %s", path)
            return None

    def put(self, key: str, reply: str, about: dict[str, Any]) -> None:
        write_json({**about, "reply": reply}, self.path(key))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the cache folder's lock: a second run on this cache waits here, then finds the first run's replies."""
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as lock:  # closing the file releases the lock, also when a run dies
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("llm: another run is asking for replies cached under %s; waiting for it", self.root)
                fcntl.flock(lock, fcntl.LOCK_EX)
            yield


class ChatBackend:
    """Answers conversations through the cache; subclasses implement `_complete` for the cache misses."""

    name: str  # goes into the `generator` column, e.g. "openai:<model>"

    def __init__(self, cache_dir: Path) -> None:
        self.cache = ReplyCache(cache_dir)
        self.cache_hits = 0
        self.cache_misses = 0

    def chat(
        self,
        conversations: list[Conversation],
        label: str,
        on_reply: OnReply | None = None,
        accept: Callable[[str], bool] | None = None,
    ) -> list[str | None]:
        """One reply per conversation, in order (None: no usable text); `label` names the caller in log lines.

        on_reply(index, reply) runs in this thread as each reply arrives (cached ones first): for progress bars.
        accept(reply) False keeps a reply out of the cache (it is still returned): a rerun asks again instead of
        replaying a reply the caller cannot use. Raises UserError when the backend fails for good; replies
        received until then stay cached.
        """
        identity = self._identity()
        keys = [cache_key(identity, conversation) for conversation in conversations]
        if all(self.cache.get(key) is not None for key in keys):
            return self._answer(conversations, keys, identity, label, on_reply, accept)
        # another run on this cache may be asking for the same replies now: wait for it, then reuse them
        with self.cache.locked():
            return self._answer(conversations, keys, identity, label, on_reply, accept)

    def _answer(
        self,
        conversations: list[Conversation],
        keys: list[str],
        identity: dict[str, Any],
        label: str,
        on_reply: OnReply | None,
        accept: Callable[[str], bool] | None,
    ) -> list[str | None]:
        """The cached replies, then the missing ones from the backend, caching those `accept` takes."""
        replies: list[str | None] = [None] * len(conversations)
        missing = []
        for i, key in enumerate(keys):
            replies[i] = self.cache.get(key)
            if replies[i] is None:
                missing.append(i)
            elif on_reply:
                on_reply(i, replies[i])
        self.cache_hits += len(conversations) - len(missing)
        self.cache_misses += len(missing)
        log.info(
            "%s: %d of %d replies cached, asking %s for %d",
            label,
            len(conversations) - len(missing),
            len(conversations),
            self.name,
            len(missing),
        )
        for j, reply in self._complete([conversations[i] for i in missing]):
            i = missing[j]
            replies[i] = reply
            if reply is not None and (accept is None or accept(reply)):
                self.cache.put(keys[i], reply, {"backend": identity["backend"], "model": identity["model"]})
            if on_reply:
                on_reply(i, reply)
        return replies

    def check(self) -> None:
        """Raise UserError now if the backend cannot answer: before minutes of work that end up needing it."""
        self._identity()

    def _identity(self) -> dict[str, Any]:
        """Everything besides the messages that decides the reply: backend, model, sampling params."""
        raise NotImplementedError

    def _complete(self, conversations: list[Conversation]) -> Iterator[tuple[int, str | None]]:
        """Yield (index, reply) as each reply arrives, in any order; raise UserError when the backend fails."""
        raise NotImplementedError


def cache_key(identity: dict[str, Any], conversation: Conversation) -> str:
    blob = json.dumps({**identity, "messages": conversation}, sort_keys=True, ensure_ascii=False)
    return sha256_bytes(blob.encode("utf-8"))


# ---------------------------------------------------------------- openai


class RetryableReply(Exception):
    """An error reply worth another try (408, 409, 429, 5xx or x-should-retry: true); `wait_s`: the wait asked."""

    def __init__(self, status: int, message: str, wait_s: float | None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.wait_s = status, wait_s


class DeadlineExceeded(Exception):
    """An attempt with no complete reply `timeout_s` after it was sent."""


class Skipped(Exception):
    """A request not sent because another one had already failed for good."""


def should_retry(status: int, headers: Mapping[str, str]) -> bool:
    """The OpenAI SDK's rule for an error reply: the server's x-should-retry wins, else 408, 409, 429 and 5xx."""
    override = headers.get("x-should-retry")
    if override in ("true", "false"):
        return override == "true"
    return status in (408, 409, 429) or status >= 500


def retry_after_s(headers: Mapping[str, str], now: float) -> float | None:
    """The wait a server asks for: retry-after-ms, or Retry-After in seconds or as an HTTP date; None if unreadable."""
    seconds = None
    with contextlib.suppress(TypeError, ValueError):
        seconds = float(headers["retry-after-ms"]) / 1000 if "retry-after-ms" in headers else None
    if seconds is None and "retry-after" in headers:
        with contextlib.suppress(TypeError, ValueError):
            seconds = float(headers["retry-after"])
        if seconds is None and (date := email.utils.parsedate_tz(headers["retry-after"])) is not None:
            seconds = email.utils.mktime_tz(date) - now
    return seconds if seconds is not None and math.isfinite(seconds) else None


def backoff_s(attempt: int, base_s: float, jitter: float) -> float:
    """The OpenAI SDK's backoff after failed attempt `attempt` (0-based): base * 2**attempt up to 16 * base, less
    up to a quarter for `jitter` in [0, 1)."""
    return min(base_s * 2**attempt, 16 * base_s) * (1 - 0.25 * jitter)


class Deadline:
    """Shuts a request's socket `seconds` after it starts: httpx's timeouts bound each read, not the request, so
    a server trickling a byte at a time could hold it forever. Pass `trace` as the request's trace extension
    (httpcore reports each new connection's socket to it); it needs a client that does not reuse connections."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        # "connection." or, through a proxy, "proxy." events; a TLS-in-TLS stream has no socket of its own
        if event.endswith((".connect_tcp.complete", ".start_tls.complete")):
            sock = info["return_value"].get_extra_info("socket")
            if not isinstance(sock, socket.socket):
                return
            with self._lock:
                self._sockets.append(sock)
                if self.expired:
                    _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    """Wake a blocked read with end-of-file; a socket already closed (or handed to TLS) is left alone."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class OpenAIChat(ChatBackend):
    def __init__(self, cfg: OpenAIConfig, cache_dir: Path, where: str, backoff_s: float = 0.5) -> None:
        super().__init__(cache_dir)
        self.cfg, self.where, self.backoff_s = cfg, where, backoff_s
        self.name = f"openai:{cfg.model}"
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"

    def _identity(self) -> dict[str, Any]:
        sampling = {"temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens}
        # two servers may serve different weights under one model name
        endpoint = self.cfg.base_url.rstrip("/")
        return {"backend": "openai", "endpoint": endpoint, "model": self.cfg.model, "sampling": sampling}

    def _complete(self, conversations: list[Conversation]) -> Iterator[tuple[int, str | None]]:
        import httpx

        key = self._api_key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        with (
            # no reused connections: `Deadline` finds a request's socket as its connection opens
            httpx.Client(
                headers=headers, timeout=self.cfg.timeout_s, limits=httpx.Limits(max_keepalive_connections=0)
            ) as client,
            ThreadPoolExecutor(self.cfg.concurrency) as pool,
        ):
            stop = threading.Event()  # set by the first failure: requests not yet sent are skipped
            futures = {pool.submit(self._post, client, c, stop): i for i, c in enumerate(conversations)}
            failure: BaseException | None = None
            for future in as_completed(futures):  # replies still arriving after a failure are kept (cached)
                error = future.exception()
                if error is None:
                    yield futures[future], future.result()
                elif failure is None and not isinstance(error, Skipped):
                    failure = error
        if failure is not None:
            raise failure if isinstance(failure, UserError) else self._unreachable(failure)

    def check(self) -> None:
        """One GET of `<base_url>/models`, no retries: a server that is down or refuses the key fails at once."""
        import httpx

        key = self._api_key()
        url = self.cfg.base_url.rstrip("/") + "/models"
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            status = httpx.get(url, headers=headers, timeout=min(self.cfg.timeout_s, CHECK_TIMEOUT_S)).status_code
        except httpx.HTTPError as err:
            raise UserError(
                f"{self.where}: no answer from {url} ({type(err).__name__}: {err}), checked before any generation. "
                f"Is the server up? Is `{self.where}.base_url` right (it usually ends in /v1)?"
            ) from err
        if status in (401, 403):
            raise UserError(f"{self.where}: {url} answered HTTP {status}: {self._key_source()} holds no key it accepts")

    def _api_key(self) -> str:
        return os.environ.get(self.cfg.api_key_env, "") if self.cfg.api_key_env else ""

    def _redact(self, message: str) -> str:
        """`message` with the API key replaced by $NAME: servers echo a rejected key back in their 401 text."""
        key = self._api_key()
        return message.replace(key, f"${self.cfg.api_key_env}") if key else message

    def _post(self, client: Any, conversation: Conversation, stop: threading.Event) -> str | None:
        if stop.is_set():
            raise Skipped
        try:
            return self._post_with_retries(client, conversation)
        except BaseException:
            stop.set()
            raise

    def _post_with_retries(self, client: Any, conversation: Conversation) -> str | None:
        import httpx

        attempt = 0
        while True:
            try:
                return self._post_once(client, conversation)
            except (httpx.TransportError, DeadlineExceeded, RetryableReply) as err:
                if attempt == self.cfg.retries:
                    raise self._gave_up(err) from err
                asked = err.wait_s if isinstance(err, RetryableReply) else None
                time.sleep(asked if asked is not None else backoff_s(attempt, self.backoff_s, random.random()))
                attempt += 1

    def _post_once(self, client: Any, conversation: Conversation) -> str | None:
        body = {
            "model": self.cfg.model,
            "messages": conversation,
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        }
        response = self._send(client, body)
        status = response.status_code
        if status >= 400 and should_retry(status, response.headers):
            raise RetryableReply(status, error_message(response), self._asked_wait(response))
        if status >= 400:
            raise UserError(
                self._redact(
                    f"{self.where}: {self.url} answered HTTP {status}: {error_message(response)}. "
                    f"Check `{self.where}.model`, `{self.where}.base_url` and that {self._key_source()} holds a key "
                    "this server accepts."
                )
            )
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            log.warning("%s: %s sent a reply that is not a chat completion; dropped", self.where, self.url)
            return None
        return content

    def _send(self, client: Any, body: dict[str, Any]) -> Any:
        """POST `body` and read the whole reply within `timeout_s` of sending it, however slowly the server sends."""
        import httpx

        try:
            with Deadline(self.cfg.timeout_s) as deadline:
                return client.post(self.url, json=body, extensions={"trace": deadline.trace})
        except httpx.TransportError as err:
            if deadline.expired:
                raise DeadlineExceeded(f"no complete reply within timeout_s={self.cfg.timeout_s:g} s") from err
            raise

    def _asked_wait(self, response: Any) -> float | None:
        """The server's Retry-After when in (0, 60] s; None (back off) when absent or <= 0; longer fails at once."""
        asked = retry_after_s(response.headers, time.time())
        if asked is not None and asked > MAX_RETRY_AFTER_S:
            raise UserError(
                self._redact(
                    f"{self.where}: {self.url} answered HTTP {response.status_code} ({error_message(response)}) and "
                    f"asked to wait {asked:.0f} s before trying again, longer than the {MAX_RETRY_AFTER_S:.0f} s "
                    f"loradag waits. Rerun later or lower `{self.where}.concurrency`; replies received so far are "
                    f"cached under {self.cache.root}."
                )
            )
        return asked if asked is not None and asked > 0 else None

    def _gave_up(self, err: BaseException) -> UserError:
        if not (isinstance(err, RetryableReply) and err.status == 429):
            return self._unreachable(err)
        return UserError(
            self._redact(
                f"{self.where}: {self.url} still rate limited after {self.cfg.retries + 1} attempts ({err}). Lower "
                f"`{self.where}.concurrency`, raise `{self.where}.retries` or rerun later; replies received so far "
                f"are cached under {self.cache.root}; rerun to resume."
            )
        )

    def _unreachable(self, err: BaseException) -> UserError:
        return UserError(
            self._redact(
                f"{self.where}: no answer from {self.url} after {self.cfg.retries + 1} attempts "
                f"({type(err).__name__}: {err}). Is the server up? Is `{self.where}.base_url` right (it usually "
                f"ends in /v1)? Is {self._key_source()} set if the server needs a key? Replies received so far "
                f"are cached under {self.cache.root}; rerun to resume."
            )
        )

    def _key_source(self) -> str:
        return (
            f"${self.cfg.api_key_env}" if self.cfg.api_key_env else f"`{self.where}.api_key_env` (empty: no key sent)"
        )


def error_message(response: Any) -> str:
    """The human part of an error reply: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or the text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])[:300]
        for field in ("error", "detail", "message"):
            if field in body:
                return str(body[field])[:300]
    return json.dumps(body)[:300]


# ---------------------------------------------------------------- transformers


class TransformersChat(ChatBackend):
    """Local batched generation; the model loads on the first cache miss, so a fully cached run never loads it."""

    SEED = 0

    def __init__(self, cfg: TransformersConfig, cache_dir: Path, where: str) -> None:
        super().__init__(cache_dir)
        self.cfg, self.where = cfg, where
        self.path = Path(cfg.model_path)
        self.name = f"transformers:{cfg.model_path}"
        self._loaded: tuple[Any, Any] | None = None
        self._digest: str | None = None

    def _identity(self) -> dict[str, Any]:
        if not (self.path / "config.json").is_file():
            raise UserError(f"{self.where}.model_path: {self.path} is not a HF model folder; run `loradag model`")
        if self._digest is None:  # the weights, not the folder name, decide the replies
            self._digest = sha256_tree(self.path)
        sampling = {"temperature": self.cfg.temperature, "max_new_tokens": self.cfg.max_new_tokens}
        return {
            "backend": "transformers",
            "model": {"path": self.cfg.model_path, "sha256": self._digest},
            "sampling": sampling,
        }

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            from stages.lib.chat import load_for_generation

            self._loaded = load_for_generation(self.path)
        return self._loaded

    def _complete(self, conversations: list[Conversation]) -> Iterator[tuple[int, str | None]]:
        from stages.lib.chat import Sampling, generate

        if not conversations:
            return
        model, tokenizer = self._load()
        sampling = Sampling(self.cfg.max_new_tokens, self.cfg.temperature, seed=self.SEED)
        for i, answer in enumerate(generate(model, tokenizer, conversations, sampling, self.cfg.batch_size)):
            yield i, answer.text


# ---------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Backend:
    """A chat backend: its params subsection (a config dataclass) and the class that answers through it."""

    config: type
    make: Callable[[Any, Path, str], ChatBackend]  # (config, cache_dir, where) -> backend


# name -> backend: a name here is a valid `generate.backend` and `evaluate.judge.backend`, configured by the
# subsection of that name (`generate.openai`, `evaluate.judge.transformers`, ...).
BACKENDS = {
    "openai": Backend(OpenAIConfig, OpenAIChat),
    "transformers": Backend(TransformersConfig, TransformersChat),
}


def config_with_backends(cls: type[T], raw: Any, where: str) -> T:
    """Config `cls` of params section `where`; each backend's subsection is checked into its `backends` field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(raw).__name__}")
    rest = dict(raw)
    backends = {
        name: from_dict(spec.config, rest.pop(name, None) or {}, f"{where}.{name}") for name, spec in BACKENDS.items()
    }
    return dataclasses.replace(from_dict(cls, rest, where), backends=backends)  # type: ignore[type-var]


def make_backend(name: str, configs: dict[str, Any], cache_dir: Path, where: str) -> ChatBackend:
    """The backend `name` built from its config; `where` is the params section, for error messages."""
    return BACKENDS[name].make(configs[name], cache_dir, f"{where}.{name}")
