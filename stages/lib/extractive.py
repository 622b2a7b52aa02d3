"""Extractive question generation: literal spans of an article chunk -> grounded Q&A pairs, offline and deterministic.

A chunk is split into prose sentences (headings, tables, code-ish and fragmentary lines left out); each sentence's
candidate answer spans are found and typed (numbers with units, versions, flags, commands, settings, names, code,
identifiers); each span becomes a wh-question where the sentence shape allows one, else a fill-in-the-blank.
`pick_pairs` chooses up to a cap per chunk, most specific types first, spread over the chunk. Used by the
`generate` stage (stages/generate.py) when `generate.backend: extractive`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from stages.lib.pairs import normalize_question


@dataclass(frozen=True)
class ExtractiveConfig:
    """`generate.extractive`: no settings yet. The section exists so dvc.yaml can depend on the chosen
    backend's section alone (`generate.${generate.backend}`), whichever backend that is."""


# Answer types, most specific first: selection prefers earlier ones.
ANSWER_TYPES = ("number", "version", "flag", "command", "setting", "name", "code", "identifier")
RANK = {kind: i for i, kind in enumerate(ANSWER_TYPES)}

HEADING = re.compile(r"#{1,6}\s")
LIST_MARKER = re.compile(r"(?:[-*+]|\d{1,3}[.)])\s+")
SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s+[\"'(`A-Z0-9])")
ABBREVIATIONS = {"e.g", "i.e", "etc", "vs", "cf", "approx", "no", "fig", "mr", "ms", "dr"}
CODE_CHARS = re.compile(r"[{};=<>$\\|]|[A-Za-z_]\(|://")
BACKTICKED = re.compile(r"`[^`\n]+`")
NUMBER = re.compile(r"(?<![\w.\-/:#@+])(?:v)?\d+(?:[.,]\d+)*(?![\w\-/]|[.,]\d)")
FLAG = re.compile(r"(?<![\w-])(?:--[a-z][\w-]+|-[A-Za-z])(?![\w-])")
BYTE_UNIT = re.compile(r"\s?(?:%|[KMGT]i?B\b)")
WORD_AFTER = re.compile(r" ([a-z]{3,}(?:-[a-z]+)?)\b")
CAP_WORD = r"[A-Z][A-Za-z0-9]*(?:[-'][A-Za-z0-9]+)*"
NAME = re.compile(rf"(?<![\w.\-`]){CAP_WORD}(?: {CAP_WORD})+(?![\w\-`])")
IDENTIFIER = re.compile(
    r"(?<![\w.\-/`])(?:[a-z][a-z0-9]*(?:_[a-z0-9]+)+"  # snake_case
    r"|[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)+"  # dotted.names, file.names
    r"|[\w.-]+(?:/[\w.-]+)+/?"  # paths/like/this
    r"|[A-Z][a-z]+[A-Z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*"  # CamelCase
    r")(?![\w\-/`]|\.\w)"
)
STOPWORDS = set(
    "a an the and or of to in on at by for from with as is are was were be been it its this that these those "
    "than then there their which who when where while if but not no so such each every per into onto over under "
    "also only all any some more most less few can will would should must may might do does did has have had "
    "about after before between both during".split()
)
UNIT_WORDS = {"percent", "million", "billion", "thousand", "hundred"}
DETERMINER_AFTER = re.compile(r" (?:the|a|an|its|their|every|each)\b")
CLAUSE_BREAK = re.compile(r", (?:and|so|but|which|while) |: |; ")
UNIT_PREFIXES = {"port", "seed", "rank", "step", "epoch", "line", "page", "layer", "version"}
DETERMINERS = {"The", "A", "An", "Each", "Every", "This", "That", "These", "Those", "Its", "Their", "Your", "Our"}
PRONOUNS = {"it", "this", "that", "they", "these", "those", "there", "here", "he", "she", "we", "you", "i"}
CLAUSE_STARTS = {
    "when",
    "if",
    "because",
    "since",
    "although",
    "after",
    "before",
    "while",
    "with",
    "in",
    "on",
    "for",
    "at",
    "by",
    "once",
    "unless",
    "as",
    "to",
    "from",
    "during",
    "without",
}
NOT_VERBS = {"this", "thus", "its", "his", "as", "us", "plus", "less", "unless", "always", "sometimes", "yes"}
AUXILIARIES = {"is", "are", "was", "were", "can", "will", "must", "should", "may", "might", "does", "has", "have"}
FILE_SUFFIX = re.compile(r"\.(?:ya?ml|json|jsonl|py|go|md|parquet|lock|txt|toml|safetensors|gguf|html|sh|cfg)$")


@dataclass(frozen=True)
class Span:
    start: int  # offsets into the chunk
    end: int
    kind: str  # one of ANSWER_TYPES
    unit: str = ""  # number spans: the counted noun ("words"), if any


@dataclass(frozen=True)
class ExtractivePair:
    question: str
    answer: str
    kind: str
    start: int  # where the answer sits in the chunk


def prose_units(text: str) -> list[tuple[int, int]]:
    """(start, end) of each paragraph or list item; headings, tables and blank lines separate them."""
    units: list[list[int]] = []
    joinable = False
    pos = 0
    for line in text.split("\n"):
        stripped = line.strip()
        begin, end = pos + len(line) - len(line.lstrip()), pos + len(line.rstrip())
        pos += len(line) + 1
        if not stripped or HEADING.match(stripped) or stripped.startswith("|"):
            joinable = False
            continue
        marker = LIST_MARKER.match(stripped)
        if marker or not joinable:
            units.append([begin + (marker.end() if marker else 0), end])
        else:
            units[-1][1] = end
        joinable = True
    return [(start, end) for start, end in units]


def sentences(text: str, partial_start: bool = False) -> list[tuple[int, int]]:
    """(start, end) of each complete prose sentence of a chunk; code-ish and fragmentary ones are left out.

    partial_start: the chunk begins mid-text (a later overlapping window), so its first fragment is skipped.
    """
    found = []
    for unit_start, unit_end in prose_units(text):
        start = unit_start
        for match in SENTENCE_END.finditer(text, unit_start, unit_end):
            last_word = text[start : match.start()].rsplit(None, 1)[-1].lower() if match.start() > start else ""
            if last_word in ABBREVIATIONS or len(last_word) == 1:
                continue
            found.append((start, match.end()))
            start = match.end() + len(text[match.end() : unit_end]) - len(text[match.end() : unit_end].lstrip())
        found.append((start, unit_end))
    if partial_start and found:
        found = found[1:]
    return [(s, e) for s, e in found if is_prose_sentence(text[s:e])]


def is_prose_sentence(sentence: str) -> bool:
    words = sentence.split()
    if not 5 <= len(words) <= 50 or not sentence.endswith(".") or not re.match(r"[A-Z0-9`\"]", sentence):
        return False
    return CODE_CHARS.search(BACKTICKED.sub("``", sentence)) is None


def find_spans(text: str, start: int, end: int) -> list[Span]:
    """Candidate answer spans inside text[start:end], most specific type kept where spans overlap."""
    spans = [
        Span(start + m.start(), start + m.end(), code_kind(m.group()[1:-1]))
        for m in BACKTICKED.finditer(text[start:end])
    ]
    masked = mask_code(text[start:end])
    spans += [Span(start + m.start(), start + m.end(), "flag") for m in FLAG.finditer(masked)]
    spans += [s for s in number_spans(masked, start) if not overlaps(s, spans)]
    names = [Span(start + s, start + e, "name") for s, e in name_matches(masked)]
    spans += [s for s in names if not overlaps(s, spans)]
    idents = [Span(start + m.start(), start + m.end(), "identifier") for m in IDENTIFIER.finditer(masked)]
    spans += [s for s in idents if not overlaps(s, spans) and is_identifier(text[s.start : s.end])]
    return sorted(spans, key=lambda s: s.start)


def mask_code(text: str) -> str:
    """`text` with each backticked span blanked out (same length, so offsets still hold)."""
    return BACKTICKED.sub(lambda m: "\0" * len(m.group()), text)


def overlaps(span: Span, taken: list[Span]) -> bool:
    return any(span.start < other.end and other.start < span.end for other in taken)


def code_kind(inner: str) -> str:
    if inner.startswith("-"):
        return "flag"
    if re.fullmatch(r"[\w.\-]+(?::\s|\s*=\s*|==)\S.*", inner):
        return "setting"
    if re.fullmatch(r"[a-z][\w.\-]*(?: [^\s:]+)+", inner) and "(" not in inner:
        return "command"
    return "code"


def number_spans(masked: str, offset: int) -> list[Span]:
    """Numbers with their unit (`900 words`, `270 MB`, `port 8000`), bare decimals, and versions."""
    spans = []
    for m in NUMBER.finditer(masked):
        start, end, value = m.start(), m.end(), m.group()
        previous = (masked[:start].split() or [""])[-1]
        if is_version(value, previous):
            spans.append(Span(offset + start, offset + end, "version"))
            continue
        unit = ""
        byte_unit, word = BYTE_UNIT.match(masked, end), WORD_AFTER.match(masked, end)
        if byte_unit:
            end, unit = byte_unit.end(), byte_unit.group().strip()
        elif word and is_unit(word.group(1), masked[word.end() :]):
            end, unit = word.end(), word.group(1)
        if previous.lower() in UNIT_PREFIXES and masked[start - len(previous) - 1 : start] == previous + " ":
            start -= len(previous) + 1
        elif not unit and len(value.replace(".", "")) < 2:
            continue  # a bare one-digit number is too vague an answer
        spans.append(Span(offset + start, offset + end, "number", unit))
    return spans


def is_version(value: str, previous: str) -> bool:
    """`2.13.0`, `v1.2`, `version 3`, or `4.57` after a package name; `0.15` on its own is a number."""
    if value.startswith("v") or value.count(".") >= 2 or previous.lower() == "version":
        return True
    after_name = re.fullmatch(r"[A-Za-z][\w-]*", previous) and previous.lower() not in STOPWORDS | UNIT_PREFIXES
    return value.count(".") == 1 and bool(after_name)


def is_unit(word: str, rest: str) -> bool:
    """`900 words`, `15 percent`: a known unit or a plural noun (not a verb like `changes the`)."""
    plural = word.endswith("s") and word not in STOPWORDS and not DETERMINER_AFTER.match(rest)
    return word in UNIT_WORDS or plural


def name_matches(masked: str) -> list[tuple[int, int]]:
    """Capitalised multi-word names, without a leading determiner or sentence-initial filler word."""
    found = []
    for m in NAME.finditer(masked):
        words = m.group().split(" ")
        start = m.start()
        while words and (words[0] in DETERMINERS or words[0].lower() in STOPWORDS | CLAUSE_STARTS | PRONOUNS):
            start += len(words.pop(0)) + 1
        if len(words) >= 2:
            found.append((start, m.end()))
    return found


def is_identifier(span: str) -> bool:
    parts = re.split(r"[._/-]", span)
    return len(span) >= 4 and span.lower() not in ABBREVIATIONS and max(map(len, parts)) > 1


def is_verb(word: str, next_word: str = "") -> bool:
    """Rough test for a present-tense verb after a subject: `stage` no, `writes` yes, `settings are` no."""
    if word in AUXILIARIES:
        return True
    third_person = word.endswith("s") and not word.endswith("ss") and len(word) > 3
    return third_person and word not in NOT_VERBS | STOPWORDS and next_word not in AUXILIARIES


def base_form(verb: str) -> str:
    if verb in ("has", "does"):
        return {"has": "have", "does": "do"}[verb]
    if verb.endswith("ies"):
        return verb[:-3] + "y"
    if re.search(r"(?:ch|sh|ss|x|z)es$", verb):
        return verb[:-2]
    return verb[:-1]


def is_subject(words: str) -> bool:
    first = words.split()[0].lower()
    return len(words.split()) <= 12 and "," not in words and first not in PRONOUNS | CLAUSE_STARTS


def lower_determiner(subject: str) -> str:
    return subject[0].lower() + subject[1:] if subject.split()[0] in DETERMINERS else subject


def wh_word(span: Span, answer: str) -> str:
    inner = answer.strip("`")
    if span.kind in ("flag", "command", "setting"):
        return f"Which {span.kind}"
    if span.kind in ("code", "identifier") and FILE_SUFFIX.search(inner):
        return "Which file"
    if span.kind in ("code", "identifier") and "/" in inner:
        return "Which path"
    return "What"


def wh_question(before: str, answer: str, after: str, span: Span) -> str | None:
    """A wh-question for the few sentence shapes that allow one without a parser; None otherwise."""
    tail = after[:-1]  # `after` ends with the sentence's full stop
    clause = CLAUSE_BREAK.search(mask_code(tail))
    tail = tail[: clause.start()] if clause else tail  # a question about the first clause reads better
    words_after = tail.split()
    subject = re.fullmatch(r"(?:The ([a-z]+) )?", before)
    if subject and words_after and span.kind not in ("number", "version"):
        if is_verb(words_after[0], words_after[1] if len(words_after) > 1 else ""):
            wh = f"Which {subject.group(1)}" if subject.group(1) else wh_word(span, answer)
            return f"{wh}{tail}?"
    if tail.strip() in ("", "by default"):
        default = re.fullmatch(r"(.+?) (defaults?) to ", before)
        if default and is_subject(default.group(1)):
            aux = "does" if default.group(2) == "defaults" else "do"
            return f"What {aux} {lower_determiner(default.group(1))} default to{tail}?"
        copula = re.fullmatch(r"(.+?) (is|are|was|were) (?:set to |called |named )?", before)
        if copula and is_subject(copula.group(1)):
            return f"What {copula.group(2)} {lower_determiner(copula.group(1))}{tail}?"
    counted = (
        span.kind == "number"
        and not tail.startswith(" of ")
        and re.fullmatch(r"[a-z]+s|[KMGT]i?B", span.unit)
        and span.unit != "percent"
    )
    verb = re.fullmatch(r"(.+?) ([a-z]+)( out| up| off| back| down)? ", before)
    if counted and verb and is_subject(verb.group(1)) and is_verb(verb.group(2)) and verb.group(2) not in AUXILIARIES:
        subject_text, particle = lower_determiner(verb.group(1)), verb.group(3) or ""
        return f"How many {span.unit} does {subject_text} {base_form(verb.group(2))}{particle}{tail}?"
    return None


def make_question(text: str, sentence: tuple[int, int], span: Span) -> tuple[str, bool]:
    """(question, is_wh) about `span`: a wh-question where the sentence allows one, else fill-in-the-blank."""
    before = " ".join(text[sentence[0] : span.start].split()) + (" " if text[span.start - 1].isspace() else "")
    after = (" " if text[span.end].isspace() else "") + " ".join(text[span.end : sentence[1]].split())
    before = before if before.strip() else ""
    answer = text[span.start : span.end]
    question = wh_question(before, answer, after, span)
    if question:
        return question[0].upper() + question[1:], True
    return f"Fill in the blank: {before}____{after}", False


def candidate_pairs(text: str, partial_start: bool) -> list[tuple[int, ExtractivePair, int]]:
    """(sentence number, pair, penalty) for every usable span of every prose sentence.

    penalty: 1 for a fill-in-the-blank, 2 for a sentence opening with a pronoun (vague out of context).
    """
    found = []
    for number, sentence in enumerate(sentences(text, partial_start)):
        vague = text[sentence[0] : sentence[1]].split()[0].lower() in PRONOUNS
        for span in find_spans(text, *sentence):
            answer = text[span.start : span.end]
            if "\n" in answer or answer != answer.strip():
                continue
            question, is_wh = make_question(text, sentence, span)
            if answer.casefold() in question.casefold():
                continue  # the sentence repeats the answer, so the question would give it away
            pair = ExtractivePair(question, answer, span.kind, span.start)
            found.append((number, pair, int(not is_wh) + 2 * vague))
    return found


def pick_pairs(
    text: str, limit: int, partial_start: bool = False, exclude: set[str] | None = None
) -> list[ExtractivePair]:
    """Up to `limit` grounded pairs for one chunk, spread over its sentences, most specific spans first.

    exclude: question keys asked already (an overlapping chunk), skipped here. Deterministic: same text,
    same pairs.
    """
    exclude = exclude or set()
    pool = [c for c in candidate_pairs(text, partial_start) if normalize_question(c[1].question) not in exclude]
    pool.sort(key=lambda c: (RANK[c[1].kind], c[2], c[1].start))
    numbers = sorted({c[0] for c in pool})
    # One pick per stretch of the chunk first (spread), then the best of what is left.
    stretches = [set(numbers[k * len(numbers) // limit : (k + 1) * len(numbers) // limit]) for k in range(limit)]
    picked: list[ExtractivePair] = []
    for allowed in stretches + [set(numbers)] * limit:
        pair = first_fresh(pool, allowed, picked) if len(picked) < limit else None
        if pair is not None:
            picked.append(pair)
    for pair in picked:
        assert text[pair.start : pair.start + len(pair.answer)] == pair.answer, "answer must be a span of the chunk"
    return sorted(picked, key=lambda p: p.start)


def first_fresh(
    pool: list[tuple[int, ExtractivePair, int]], allowed: set[int], picked: list[ExtractivePair]
) -> ExtractivePair | None:
    """The first pair of `pool` from an allowed sentence whose answer and question are not picked yet."""
    answers = {p.answer.casefold() for p in picked}
    questions = {normalize_question(p.question) for p in picked}
    for number, pair, _ in pool:
        fresh = pair.answer.casefold() not in answers and normalize_question(pair.question) not in questions
        if number in allowed and fresh:
            return pair
    return None
