"""Fault injection: the openai backend (and once the whole `generate` stage) against a loopback fake endpoint that
fails in scripted ways — 5xx, 429 with Retry-After, a reply dripped a byte at a time, a garbage body, a socket
closed mid-reply, no server at all. Timings are asserted only as lower bounds, or as generous upper bounds that
the pre-fix behaviour broke by far; every server thread stops itself (bounded loops, a stop event)."""

import email.utils
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import polars as pl
import project
import pytest
from test_backends import completion, conversations, free_port

from stages.lib.backends import Deadline, OpenAIChat, OpenAIConfig, backoff_s, retry_after_s, should_retry
from stages.lib.common import UserError
from stages.lib.params import ConfigError, from_dict

PAIRS = json.dumps({"pairs": [{"question": "What follows hello?", "answer": "world"}]})


@dataclass
class Reply:
    status: int = 200
    body: Any = field(default_factory=lambda: completion(PAIRS))  # dict or list: JSON; bytes: as they are
    headers: dict[str, str] = field(default_factory=dict)
    drip_s: float = 0.0  # pause before each byte of the response, status line included
    cut_after: int | None = None  # send this many body bytes, then close the socket


Script = Callable[[int], Reply]  # call number (from 1) -> what to answer


@dataclass
class FaultServer:
    url: str
    script: Script
    stop: threading.Event
    times: list[float] = field(default_factory=list)  # time.monotonic() as each request arrived
    lock: threading.Lock = field(default_factory=threading.Lock)


class FaultHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        fake: FaultServer = self.server.fake  # type: ignore[attr-defined]
        self.rfile.read(int(self.headers["Content-Length"]))
        with fake.lock:
            fake.times.append(time.monotonic())
            reply = fake.script(len(fake.times))
        body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        head = [f"HTTP/1.1 {reply.status} X", "Content-Type: application/json", f"Content-Length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in reply.headers.items()] + ["Connection: close", "", ""]
        data = "\r\n".join(head).encode() + body[: reply.cut_after]
        self.close_connection = True
        try:
            if not reply.drip_s:
                self.wfile.write(data)
                return
            for i in range(len(data)):  # bounded by the response's length and by the fixture's stop event
                if fake.stop.wait(reply.drip_s):
                    return
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
        except OSError:  # the client gave up and closed the socket
            return

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Callable[[Script], FaultServer]]:
    servers = []
    stop = threading.Event()

    def start(script: Script) -> FaultServer:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), FaultHandler)
        httpd.fake = FaultServer(f"http://127.0.0.1:{httpd.server_port}/v1", script, stop)  # type: ignore[attr-defined]
        threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True).start()
        servers.append(httpd)
        return httpd.fake  # type: ignore[attr-defined]

    yield start
    stop.set()
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def backend(url: str, cache: Path, **overrides: Any) -> OpenAIChat:
    cfg = {"base_url": url, "model": "test-model", "api_key_env": "", "concurrency": 1, "retries": 2}
    return OpenAIChat(OpenAIConfig(**(cfg | overrides)), cache, where="generate.openai", backoff_s=0.001)


def gaps(server: FaultServer) -> list[float]:
    return [b - a for a, b in zip(server.times, server.times[1:], strict=False)]


def cached(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.json")]


# --- retry rules (pure) -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers", "retried"),
    [
        (408, {}, True),
        (409, {}, True),
        (429, {}, True),
        (500, {}, True),
        (503, {}, True),
        (400, {}, False),
        (401, {}, False),
        (404, {}, False),
        (503, {"x-should-retry": "false"}, False),
        (400, {"x-should-retry": "true"}, True),
        (429, {"x-should-retry": "maybe"}, True),
    ],
)
def test_should_retry_follows_the_openai_sdk(status: int, headers: dict[str, str], retried: bool) -> None:
    assert should_retry(status, headers) is retried


def test_retry_after_reads_milliseconds_seconds_and_http_dates() -> None:
    now = 1_700_000_000.0
    assert retry_after_s({"retry-after-ms": "1500", "retry-after": "9"}, now) == 1.5  # milliseconds win
    assert retry_after_s({"retry-after": "2.5"}, now) == 2.5
    assert retry_after_s({"retry-after": email.utils.formatdate(now + 30, usegmt=True)}, now) == 30
    assert retry_after_s({"retry-after-ms": "soon", "retry-after": "4"}, now) == 4
    for unreadable in ({}, {"retry-after": "tomorrow"}, {"retry-after": "nan"}, {"retry-after-ms": "inf"}):
        assert retry_after_s(unreadable, now) is None


def test_backoff_doubles_up_to_a_cap_with_at_most_a_quarter_off() -> None:
    assert [backoff_s(n, 0.5, 0.0) for n in range(6)] == [0.5, 1, 2, 4, 8, 8]
    assert backoff_s(2, 0.5, 0.999) > 0.75 * 2


# --- through OpenAIChat --------------------------------------------------------------------------------


def test_5xx_then_success_is_retried_and_cached(serve, tmp_path: Path) -> None:
    server = serve(lambda n: Reply(503, {"error": {"message": "overloaded"}}) if n <= 2 else Reply())
    assert backend(server.url, tmp_path, retries=2).chat(conversations(1), "test") == [PAIRS]
    assert len(server.times) == 3 and len(cached(tmp_path)) == 1


@pytest.mark.parametrize(
    ("headers", "asked_s"),
    [({"Retry-After": "1"}, 1.0), ({"retry-after-ms": "600"}, 0.6), ({"Retry-After": "0.4"}, 0.4)],
)
def test_429_waits_at_least_the_retry_after_then_succeeds(
    serve, tmp_path: Path, headers: dict[str, str], asked_s: float
) -> None:
    server = serve(lambda n: Reply(429, {"error": {"message": "slow down"}}, headers) if n == 1 else Reply())
    assert backend(server.url, tmp_path).chat(conversations(1), "test") == [PAIRS]
    assert len(server.times) == 2 and gaps(server)[0] >= asked_s


def test_429_with_retry_after_as_an_http_date_waits_until_then(serve, tmp_path: Path) -> None:
    def script(n: int) -> Reply:
        when = email.utils.formatdate(time.time() + 2, usegmt=True)  # whole seconds: 1 to 2 s from now
        return Reply(429, {"error": "slow down"}, {"Retry-After": when}) if n == 1 else Reply()

    server = serve(script)
    assert backend(server.url, tmp_path).chat(conversations(1), "test") == [PAIRS]
    assert gaps(server)[0] >= 0.9


def test_retry_after_over_60_s_fails_at_once_saying_how_long_the_server_asked(serve, tmp_path: Path) -> None:
    server = serve(lambda n: Reply(429, {"error": {"message": "quota"}}, {"Retry-After": "120"}))
    started = time.monotonic()
    with pytest.raises(UserError, match=r"asked to wait 120 s .*longer than the 60 s") as err:
        backend(server.url, tmp_path, retries=4).chat(conversations(1), "test")
    assert time.monotonic() - started < 5 and len(server.times) == 1
    assert "quota" in str(err.value) and "generate.openai.concurrency" in str(err.value)


def test_429_until_retries_run_out_says_rate_limited_not_is_the_server_up(serve, tmp_path: Path) -> None:
    server = serve(lambda n: Reply(429, {"error": {"message": "slow down"}}, {"retry-after-ms": "50"}))
    with pytest.raises(UserError) as err:
        backend(server.url, tmp_path, retries=2).chat(conversations(1), "test")
    message = str(err.value)
    assert "rate limited after 3 attempts" in message and "slow down" in message
    assert "Is the server up?" not in message
    assert len(server.times) == 3 and min(gaps(server)) >= 0.05


def test_x_should_retry_false_stops_a_5xx_from_being_retried(serve, tmp_path: Path) -> None:
    server = serve(lambda n: Reply(503, {"error": "gone for good"}, {"x-should-retry": "false"}))
    with pytest.raises(UserError, match="HTTP 503: gone for good"):
        backend(server.url, tmp_path, retries=3).chat(conversations(1), "test")
    assert len(server.times) == 1


def test_x_should_retry_true_retries_a_4xx(serve, tmp_path: Path) -> None:
    server = serve(lambda n: Reply(400, {"error": "warming up"}, {"x-should-retry": "true"}) if n == 1 else Reply())
    assert backend(server.url, tmp_path).chat(conversations(1), "test") == [PAIRS]
    assert len(server.times) == 2


def test_a_dripping_server_fails_each_attempt_at_the_deadline(serve, tmp_path: Path) -> None:
    server = serve(lambda n: Reply(drip_s=0.05))  # ~250 bytes: over 12 s per reply, were it read to the end
    started = time.monotonic()
    with pytest.raises(UserError) as err:
        backend(server.url, tmp_path, timeout_s=0.5, retries=1).chat(conversations(1), "test")
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 4, elapsed  # two attempts of 0.5 s each, not two whole drips
    assert len(server.times) == 2 and "within timeout_s=0.5 s" in str(err.value)
    assert not cached(tmp_path)


def test_a_drip_is_cut_at_the_deadline_and_the_retry_succeeds(serve, tmp_path: Path) -> None:
    server = serve(lambda n: Reply(drip_s=0.05) if n == 1 else Reply())
    started = time.monotonic()
    assert backend(server.url, tmp_path, timeout_s=0.5).chat(conversations(1), "test") == [PAIRS]
    assert 0.5 <= time.monotonic() - started < 3 and len(server.times) == 2


def test_a_slow_but_steady_reply_within_the_deadline_is_kept(serve, tmp_path: Path) -> None:
    server = serve(lambda n: Reply(body=completion("ok"), drip_s=0.002))
    assert backend(server.url, tmp_path, timeout_s=5).chat(conversations(1), "test") == ["ok"]
    assert len(server.times) == 1


@pytest.mark.parametrize("value", ["inf", float("inf"), "nan", 0, -1])
def test_timeout_s_must_be_a_finite_positive_deadline(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"generate\.openai\.timeout_s must be a number > 0"):
        from_dict(OpenAIConfig, {"timeout_s": value}, "generate.openai")


class Stream:
    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock

    def get_extra_info(self, name: str) -> socket.socket | None:
        return self.sock if name == "socket" else None


def test_the_deadline_shuts_sockets_opened_through_a_proxy_and_skips_streams_without_one() -> None:
    left, right = socket.socketpair()
    started = time.monotonic()  # before the deadline's own clock starts, so the wait measured is never shorter
    with left, right, Deadline(0.2) as deadline:
        deadline.trace("proxy.connect_tcp.complete", {"return_value": Stream(left)})
        deadline.trace("proxy.start_tls.complete", {"return_value": Stream(None)})  # TLS in TLS: no socket
        left.settimeout(5)
        assert left.recv(1) == b""  # woken by the shutdown at the deadline, not by the 5 s timeout
        assert 0.2 <= time.monotonic() - started < 4 and deadline.expired


def test_a_connection_closed_mid_reply_is_retried(serve, tmp_path: Path) -> None:
    server = serve(lambda n: Reply(cut_after=10) if n == 1 else Reply())
    assert backend(server.url, tmp_path).chat(conversations(1), "test") == [PAIRS]
    assert len(server.times) == 2 and len(cached(tmp_path)) == 1


def test_a_garbage_200_body_is_none_and_not_cached(serve, tmp_path: Path) -> None:
    server = serve(lambda n: Reply(body=b"\x00\xffnot json at all"))
    assert backend(server.url, tmp_path).chat(conversations(2), "test") == [None, None]
    assert len(server.times) == 2 and not cached(tmp_path)  # a 200 is an answer: not retried


def test_a_server_that_is_down_fails_naming_the_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(UserError) as err:
        backend(url, tmp_path, retries=1).chat(conversations(1), "test")
    assert f"{url}/chat/completions" in str(err.value) and "after 2 attempts" in str(err.value)
    assert "Is the server up?" in str(err.value)


# --- through the generate stage -----------------------------------------------------------------------


def run_stage(root: Path, monkeypatch: pytest.MonkeyPatch, url: str, texts: list[str]) -> dict:
    openai = {"base_url": url, "model": "test-model", "api_key_env": "", "concurrency": 1, "retries": 2}
    return project.run_generate_stage(root, monkeypatch, openai, texts)


def test_the_generate_stage_rides_out_faults_and_drops_garbage(
    serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults = {  # one request at a time, chunk by chunk; retries: 2
        1: Reply(429, {"error": "slow down"}, {"retry-after-ms": "300"}),  # chunk 0
        3: Reply(502, b"<html>bad gateway</html>"),  # chunk 1
        4: Reply(cut_after=5),  # chunk 1, second attempt
        6: Reply(body=b"garbage"),  # chunk 2's only answer: a 200 is not retried
    }

    def script(n: int) -> Reply:
        pairs = {"pairs": [{"question": f"What is hello number {n}?", "answer": "world"}]}
        return faults.get(n, Reply(body=completion(json.dumps(pairs))))

    server = serve(script)
    metrics = run_stage(tmp_path, monkeypatch, server.url, texts=["hello world", "hello there", "hello again"])
    assert len(server.times) == 6 and gaps(server)[0] >= 0.3
    assert (metrics["pairs"], metrics["dropped_malformed"], metrics["cache_misses"]) == (2, 1, 3)
    assert len(cached(tmp_path / ".cache" / "generate")) == 2
    pairs = pl.read_parquet(tmp_path / "data" / "generate" / "pairs.parquet")
    assert pairs["context"].to_list() == ["hello world", "hello there"]


def test_the_generate_stage_with_the_server_down_names_the_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(UserError, match=f"no answer from {url}/chat/completions after 3 attempts"):
        run_stage(tmp_path, monkeypatch, url, texts=["hello world"])
    assert not (tmp_path / "data" / "generate").exists()
