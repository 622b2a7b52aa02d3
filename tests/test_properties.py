"""Property-based tests (hypothesis) of the pure cores that take untrusted input: article chunking, code mining,
reply parsing and the params loader. Each property runs on a modest number of examples, so the file stays fast."""

import dataclasses
import inspect
import json
import re
import string
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from stages.extract import CodeConfig, ExtractConfig, chunk_article
from stages.generate import parse_pairs
from stages.lib.backends import OpenAIConfig, extract_json
from stages.lib.mining import CodeParseError, mine_python_functions
from stages.lib.mining_go import mine_go_functions
from stages.lib.params import ConfigError, from_dict

FAST = settings(max_examples=150, deadline=None)

# --- chunking -----------------------------------------------------------------------------------------

word = st.text(alphabet=st.characters(blacklist_categories=("Zs", "Zl", "Zp", "Cc", "Cs")), min_size=1, max_size=8)
space = st.sampled_from([" ", "  ", "\n", "\n\n", "\t", " \n "])


@st.composite
def articles(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A text and its words: words joined by whitespace, with whitespace around."""
    words = draw(st.lists(word, max_size=60))
    text = draw(space)
    for w in words:
        text += w + draw(space)
    return text, words


@st.composite
def windows(draw: st.DrawFn) -> tuple[int, int]:
    chunk_words = draw(st.integers(1, 25))
    return chunk_words, draw(st.integers(0, chunk_words - 1))


@FAST
@given(articles(), windows())
def test_chunks_cover_every_word_in_windows_of_at_most_chunk_words(article: tuple[str, list[str]], w: Any) -> None:
    text, words = article
    chunk_words, overlap = w
    spans = chunk_article(text, chunk_words, overlap)
    chunks = [text[start:end].split() for start, end, _ in spans]
    assert [len(c) for c in chunks] == [n for _, _, n in spans]
    assert all(1 <= len(c) <= chunk_words for c in chunks)
    # the windows, laid at their word offsets, rebuild the text's words: every word is in some window
    offsets = [0] if chunks else []
    for c in chunks[:-1]:
        offsets.append(offsets[-1] + len(c) - overlap)
    covered: list[str] = []
    for offset, c in zip(offsets, chunks, strict=True):
        assert covered[offset:] == c[: len(covered) - offset]  # the overlap repeats the words it shares
        covered = covered[:offset] + c
    assert covered == words
    assert chunk_article(text, chunk_words, overlap) == spans  # deterministic


@FAST
@given(articles(), windows())
def test_consecutive_chunks_share_exactly_overlap_words(article: tuple[str, list[str]], w: Any) -> None:
    text, _ = article
    chunk_words, overlap = w
    spans = chunk_article(text, chunk_words, overlap)
    for (_, prev_end, _), (start, _, _) in zip(spans, spans[1:], strict=False):
        assert len(text[start:prev_end].split()) == overlap
    assert len(spans) == 0 or text[spans[-1][1] :].strip() == ""  # the last window ends at the last word


@FAST
@given(st.text(max_size=300), windows())
def test_chunking_arbitrary_text_loses_no_word(text: str, w: Any) -> None:
    spans = chunk_article(text, *w)
    words = re.findall(r"\S+", text)
    assert (spans == []) == (words == [])
    if spans:
        assert text[: spans[0][0]].strip() == "" and text[spans[-1][1] :].strip() == ""
        assert sum(n for _, _, n in spans) >= len(words)


# --- code mining --------------------------------------------------------------------------------------

name = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).map(lambda s: "f_" + s)
doc = st.text(alphabet=string.ascii_letters + string.digits + " .,:-", min_size=1, max_size=40).filter(str.strip)


@st.composite
def python_modules(draw: st.DrawFn) -> tuple[str, list[tuple[str, int, int, str]]]:
    """Source of top-level and class-nested functions, and (name, line, end_line, doc) of the documented ones."""
    lines: list[str] = ['"""Module doc."""', ""]
    expected = []
    for _ in range(draw(st.integers(0, 5))):
        in_class = draw(st.booleans())
        indent = "    " if in_class else ""
        if in_class:
            lines.append(f"class C{len(lines)}:")
        fname, fdoc, body = draw(name), draw(st.none() | doc), draw(st.integers(1, 4))
        start = len(lines) + 1
        lines.append(f"{indent}def {fname}(x):")
        if fdoc is not None:
            lines.append(f'{indent}    """{fdoc}"""')
        lines += [f"{indent}    x = x + {i}" for i in range(body)]
        if fdoc is not None:
            expected.append((fname, start, len(lines), inspect.cleandoc(fdoc)))
        lines.append("")
    return "\n".join(lines) + "\n", expected


@FAST
@given(python_modules(), st.integers(1, 6))
def test_mined_python_functions_are_the_documented_ones_at_their_lines(module: Any, min_lines: int) -> None:
    source, documented = module
    mined = mine_python_functions(source, "m.py", min_lines)
    want = [d for d in documented if d[2] - d[1] + 1 >= min_lines]
    assert [(f.symbol, f.line, f.end_line, f.instruction) for f in mined] == want
    lines = source.split("\n")
    for f in mined:
        assert f.output.split("\n")[0].startswith(f"def {f.symbol}(")
        assert f.output.split("\n")[-1].strip() == lines[f.end_line - 1].strip()


@FAST
@given(st.text(max_size=200))
@example("00000000000")  # tree-sitter-go (used before go/ast) flagged this file with no ERROR node: an AssertionError
def test_mining_arbitrary_text_raises_only_code_parse_error(text: str) -> None:
    for mine in (mine_python_functions, mine_go_functions):
        try:
            mined = mine(text, "x", 1)
        except CodeParseError as err:
            assert str(err).startswith(f"x:{err.line}: ")
        else:
            assert isinstance(mined, list)


# --- reply parsing ------------------------------------------------------------------------------------

blank_free = st.text(min_size=1, max_size=40).filter(str.strip)
prose = st.text(alphabet=string.ascii_letters + " .,:!\n", max_size=60)


@FAST
@given(st.text(max_size=300))
def test_reply_parsing_never_raises_on_arbitrary_text(reply: str) -> None:
    extract_json(reply)
    pairs, bad = parse_pairs(reply)
    assert pairs is None or (isinstance(pairs, list) and bad >= 0)


@FAST
@given(
    st.lists(st.tuples(blank_free, blank_free), max_size=5),
    st.sampled_from(["bare", "fenced", "prose"]),
    st.booleans(),
    prose,
    prose,
)
def test_a_pairs_reply_round_trips_bare_fenced_or_in_prose(
    pairs: list[tuple[str, str]], wrap: str, ascii_only: bool, before: str, after: str
) -> None:
    blob = json.dumps({"pairs": [{"question": q, "answer": a} for q, a in pairs]}, ensure_ascii=ascii_only)
    reply = {"bare": blob, "fenced": f"```json\n{blob}\n```", "prose": f"{before}\n{blob}\n{after}"}[wrap]
    assert parse_pairs(reply) == ([(" ".join(q.split()), a.strip()) for q, a in pairs], 0)


# --- params loader ------------------------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers(-5, 2000) | st.floats(allow_nan=True) | st.text(max_size=8)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
)
CONFIGS = {"extract": ExtractConfig, "generate.openai": OpenAIConfig}


def keyed(cls: type) -> st.SearchStrategy[dict[str, Any]]:
    """Mappings mostly of `cls`'s own keys (nested ones too), now and then an unknown one, with random values."""
    keys = [f.name for f in dataclasses.fields(cls)] + ["nope"]
    nested = st.dictionaries(st.sampled_from(["min_lines", "languages", "other"]), values, max_size=3)
    return st.dictionaries(st.sampled_from(keys), values | nested, max_size=5)


@FAST
@pytest.mark.parametrize("where", list(CONFIGS))
@given(data=st.data())
def test_from_dict_returns_a_config_or_a_config_error_naming_a_dotted_key(where: str, data: st.DataObject) -> None:
    cls = CONFIGS[where]
    raw = data.draw(keyed(cls))
    try:
        config = from_dict(cls, raw, where)
    except ConfigError as err:
        # the dotted key under `where` (an odd key like "" or "a b" is named as it is)
        assert re.match(rf"{re.escape(where)}[. \[]", str(err)), str(err)
    else:
        assert isinstance(config, cls)


@st.composite
def extract_params(draw: st.DrawFn) -> dict[str, Any]:
    chunk_words = draw(st.integers(1, 5000))
    return {
        "kind": draw(st.sampled_from(["articles", "code", "pairs"])),
        "root": draw(st.text(max_size=20)),
        "chunk_words": chunk_words,
        "overlap_words": draw(st.integers(0, chunk_words - 1)),
        "on_bad_file": draw(st.sampled_from(["error", "skip"])),
        "code": {
            "min_lines": draw(st.integers(1, 100)),
            "languages": draw(st.lists(st.sampled_from(["go", "python"]), unique=True)),
        },
        "pairs": {"columns": {"question": draw(st.sampled_from([None, "prompt"])), "answer": None,
                              "instruction": None, "input": None, "output": None, "system": None,
                              "messages": draw(st.sampled_from([None, "dialog"])), "conversations": None}},
    }  # fmt: skip


@FAST
@given(extract_params())
def test_valid_extract_params_round_trip(raw: dict[str, Any]) -> None:
    config = from_dict(ExtractConfig, raw, "extract")
    assert dataclasses.asdict(config) == raw
    assert isinstance(config.code, CodeConfig)
    assert from_dict(ExtractConfig, dataclasses.asdict(config), "extract") == config


@FAST
@given(
    st.fixed_dictionaries(
        {
            "base_url": st.sampled_from(["http://", "https://"]).map(lambda s: s + "host:8000/v1"),
            "model": st.text(min_size=1, max_size=20).filter(str.strip),
            "api_key_env": st.sampled_from(["", "OPENAI_API_KEY", "HF_TOKEN", "MY_KEY_2"]),
            "temperature": st.floats(0, 2),
            "max_tokens": st.integers(1, 10**6),
            "concurrency": st.integers(1, 64),
            "timeout_s": st.floats(0.001, 1e6),
            "retries": st.integers(0, 50),
        }
    )
)
def test_valid_openai_params_round_trip(raw: dict[str, Any]) -> None:
    assert dataclasses.asdict(from_dict(OpenAIConfig, raw, "generate.openai")) == raw
