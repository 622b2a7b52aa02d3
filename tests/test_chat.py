"""The chat core: one prompt, token for token, in training, evaluation and generation; precision; stop handling."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from stages import evaluate, train
from stages.lib import chat
from stages.lib.backends import TransformersChat, TransformersConfig

SYSTEM = "Answer tersely."
FP32 = chat.pick_precision(cuda_available=False, bf16_supported=False)


# A template of another shape than ChatML (no <|im_start|>), to show a .jinja file is what every side renders.
CUSTOM_TEMPLATE = (
    "{%- for m in messages %}{{ '### ' + m['role'] | upper + ':\\n' + m['content'] + '\\n' }}"
    "{%- if m['role'] == 'assistant' %}{{ eos_token + '\\n' }}{% endif %}{% endfor %}"
    "{%- if add_generation_prompt %}{{ '### ASSISTANT:\\n' }}{% endif %}"
)
HISTORY = [
    {"role": "system", "content": "You are the record's own assistant."},
    {"role": "user", "content": "Which stage trains the adapter?"},
    {"role": "assistant", "content": "The train stage."},
]


@pytest.fixture(scope="module", params=["model", "chatml_default", "chatml", "jinja"])
def template(request: pytest.FixtureRequest, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """(model folder, train.chat_template): SmolLM2's own template, the ChatML fallback of a base that ships none,
    ChatML forced, or a .jinja file of another shape."""
    if request.param == "chatml_default":
        return no_template_copy(tiny_model_dir, tmp_path_factory.mktemp("no-template")), "model"
    choice = {"model": "model", "chatml": "chatml", "jinja": "chat_templates/custom.jinja"}[request.param]
    return tiny_model_dir, choice


def no_template_copy(tiny_model_dir: Path, folder: Path) -> Path:
    """The tiny model with no chat template, prepared as `loradag model` prepares such a base (ChatML fallback)."""
    shutil.copytree(tiny_model_dir, folder, dirs_exist_ok=True)
    for name in ("chat_template.jinja", "chat_template.json"):
        (folder / name).unlink(missing_ok=True)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert not tokenizer.chat_template
    assert chat.prepare_tokenizer(tokenizer) == "chatml_default"  # what `loradag model` does with such a base
    tokenizer.save_pretrained(folder)
    return folder


def recorded_prompts(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Patch generate to record the prompt ids of every row it is given, left padding removed."""
    from transformers import GenerationMixin

    prompts: list[list[int]] = []
    original = GenerationMixin.generate

    def recording(self: Any, *args: Any, **kwargs: Any) -> Any:
        for ids, mask in zip(kwargs["input_ids"].tolist(), kwargs["attention_mask"].tolist(), strict=True):
            prompts.append([token for token, keep in zip(ids, mask, strict=True) if keep])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", recording)
    return prompts


def label_spans(labels: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each run of learned tokens (label != -100)."""
    spans: list[tuple[int, int]] = []
    for i, label in enumerate(labels):
        if label != -100 and (not spans or spans[-1][1] != i):
            spans.append((i, i + 1))
        elif label != -100:
            spans[-1] = (spans[-1][0], i + 1)
    return spans


def with_multi_turn(pairs: Any) -> Any:
    """The pairs, the first one turned into the last turn of a conversation (its own system prompt included)."""
    import json

    import polars as pl

    return pairs.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.lit(json.dumps(HISTORY)))
                              .otherwise(pl.col("history")).alias("history"))  # fmt: skip


def test_prompt_tokens_are_identical_as_trained_evaluated_and_generated(
    template: tuple, make_pairs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir, choice = template
    monkeypatch.chdir(tmp_path)
    (tmp_path / "chat_templates").mkdir()
    (tmp_path / "chat_templates" / "custom.jinja").write_text(CUSTOM_TEMPLATE)
    pairs = with_multi_turn(make_pairs(3))
    tokenizer = chat.load_tokenizer(model_dir, chat_template=choice)
    from stages.lib.pairs import history_messages

    prompts_wanted = [
        chat.prompt_ids(tokenizer, chat.prompt_messages(q, SYSTEM, history_messages(h)))
        for q, h in pairs.select("question", "history").iter_rows()
    ]
    opening = "### SYSTEM:\n" if choice.endswith(".jinja") else "<|im_start|>system\n"
    assert tokenizer.decode(prompts_wanted[1]).startswith(opening + SYSTEM)
    assert tokenizer.decode(prompts_wanted[0]).startswith(opening + HISTORY[0]["content"])  # the record's own

    cfg = train.TrainConfig(system_prompt=SYSTEM, chat_template=choice, max_steps=1, batch_size=2, max_length=256)
    trainer = train.build_trainer(
        train.attach_lora(chat.load_model(model_dir, FP32), cfg), tokenizer, cfg, FP32, pairs, pairs, tmp_path, []
    )
    for row, wanted in enumerate(prompts_wanted):
        example = trainer.train_dataset[row]
        spans = label_spans(example["labels"])
        assert example["input_ids"][: spans[-1][0]] == wanted  # what trl feeds the model before the last answer
        learned = [tokenizer.decode(example["input_ids"][a:b]) for a, b in spans]
        assert learned[-1].startswith(pairs["answer"][row]) and len(learned[-1]) > len(pairs["answer"][row])
    multi = [tokenizer.decode(trainer.train_dataset[0]["input_ids"][a:b])
             for a, b in label_spans(trainer.train_dataset[0]["labels"])]  # fmt: skip
    assert len(multi) == 2 and multi[0].startswith("The train stage.")  # every assistant turn is learned
    assert all(len(label_spans(trainer.train_dataset[row]["labels"])) == 1 for row in (1, 2))

    prompts = recorded_prompts(monkeypatch)
    model, left = chat.load_for_generation(model_dir, chat_template=choice)
    evaluate.generate_answers(model, left, evaluate.eval_items(pairs), SYSTEM, max_new_tokens=2, batch_size=3)
    assert prompts == prompts_wanted  # evaluate, batched with left padding, asks as training taught
    if choice == "model":  # the transformers backend renders with its model folder's own template
        backend = TransformersChat(TransformersConfig(str(model_dir), batch_size=2, max_new_tokens=2), tmp_path, "g")
        conversations = [chat.prompt_messages(q, SYSTEM, history_messages(h))
                         for q, h in pairs.select("question", "history").iter_rows()]  # fmt: skip
        backend.chat(conversations, label="test")
        assert prompts[3:] == prompts_wanted


def test_a_template_file_that_does_not_render_or_drops_turns_names_the_file(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stages.lib.common import UserError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "chat_templates").mkdir()
    (tmp_path / "chat_templates" / "broken.jinja").write_text("{% for m in messages %}{{ m['content'] }")
    (tmp_path / "chat_templates" / "last.jinja").write_text("{{ messages[-1]['content'] }}")
    with pytest.raises(UserError, match=r"train\.chat_template: chat_templates/broken\.jinja: the template does not"):
        chat.load_tokenizer(tiny_model_dir, chat_template="chat_templates/broken.jinja")
    with pytest.raises(UserError, match=r"chat_templates/last\.jinja: the template drops turns: 'probe system'"):
        chat.load_tokenizer(tiny_model_dir, chat_template="chat_templates/last.jinja")
    with pytest.raises(UserError, match=r"chat_templates/missing\.jinja cannot be read"):
        chat.load_tokenizer(tiny_model_dir, chat_template="chat_templates/missing.jinja")


@pytest.mark.parametrize("value", ["", "templates/x.jinja", "chat_templates/x.txt", "chat_templates/../x.jinja", 3])
def test_chat_template_is_model_chatml_or_a_jinja_file_under_chat_templates(value: Any) -> None:
    with pytest.raises(ValueError, match="train.chat_template must be model, chatml or the path of a .jinja file"):
        train.TrainConfig(chat_template=value)
    assert chat.chat_template({"train": {"chat_template": "chatml"}}) == "chatml"
    assert chat.chat_template({}) == train.TrainConfig().chat_template == "model"


def test_the_exported_tokenizer_carries_the_chat_template(tiny_model_dir: Path, tmp_path: Path) -> None:
    tokenizer = chat.load_tokenizer(tiny_model_dir, chat_template="chatml")
    tokenizer.save_pretrained(tmp_path)  # what export does with it
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path).chat_template == chat.CHATML_TEMPLATE


def test_generation_stops_at_the_first_stop_token_and_counts_tokens_up_to_it(tiny_model_dir: Path) -> None:
    model, tokenizer = chat.load_for_generation(tiny_model_dir)
    conversations = [chat.prompt_messages(q, SYSTEM) for q in ("Which stage trains?", "What is a pair?")]
    answers = list(chat.generate(model, tokenizer, conversations, chat.Sampling(max_new_tokens=8), batch_size=2))
    assert len(answers) == 2 and all(0 <= a.tokens <= 8 and a.latency_s >= 0 for a in answers)
    one_by_one = [next(chat.generate(model, tokenizer, [c], chat.Sampling(max_new_tokens=8), 1)) for c in conversations]
    assert [a.text for a in answers] == [a.text for a in one_by_one]  # left padding changes no greedy answer
    assert tokenizer.eos_token_id in chat.stop_token_ids(model, tokenizer)


def test_a_streamed_answer_joins_to_the_generated_answer(tiny_model_dir: Path) -> None:
    model, tokenizer = chat.load_for_generation(tiny_model_dir)
    for question in ("Which stage trains?", "What is a pair?"):
        messages = chat.prompt_messages(question, SYSTEM)
        pieces = list(chat.stream(model, tokenizer, messages, chat.Sampling(max_new_tokens=10)))
        assert len(pieces) > 1 and "<|im_end|>" not in "".join(pieces)
        assert "".join(pieces).strip() == next(chat.generate(model, tokenizer, [messages], chat.Sampling(10), 1)).text


def test_a_conversation_without_a_system_message_gets_the_training_one() -> None:
    user = [{"role": "user", "content": "Hi"}]
    assert chat.with_system_prompt(user, SYSTEM) == chat.prompt_messages("Hi", SYSTEM)
    assert chat.prompt_messages("Hi", SYSTEM, HISTORY) == [*HISTORY, *user]  # the record's own system prompt
    assert chat.prompt_messages("Hi", SYSTEM, HISTORY[1:])[0] == {"role": "system", "content": SYSTEM}
    own = [{"role": "system", "content": "Be brief."}, *user]
    assert chat.with_system_prompt(own, SYSTEM) == own


def test_evaluate_and_train_read_the_same_system_prompt() -> None:
    params = {"train": {"system_prompt": "Be brief."}}
    assert chat.system_prompt(params) == "Be brief." == train.TrainConfig(system_prompt="Be brief.").system_prompt
    assert chat.system_prompt({}) == train.TrainConfig().system_prompt == chat.DEFAULT_SYSTEM_PROMPT
    with pytest.raises(ValueError, match="train.system_prompt must be a non-empty string"):
        chat.system_prompt({"train": {"system_prompt": "  "}})


@pytest.mark.parametrize(
    ("cuda", "bf16", "expected"),
    [
        (True, True, chat.Precision("bf16", "bfloat16", bf16=True, fp16=False, lora_fp32=False)),
        (True, False, chat.Precision("fp16", "float16", bf16=False, fp16=True, lora_fp32=True)),
        (False, False, chat.Precision("fp32", "float32", bf16=False, fp16=False, lora_fp32=False)),
        (False, True, chat.Precision("fp32", "float32", bf16=False, fp16=False, lora_fp32=False)),  # CPU bf16 is slow
    ],
)
def test_precision_follows_the_device(cuda: bool, bf16: bool, expected: chat.Precision) -> None:
    assert chat.pick_precision(cuda, bf16) == expected


def test_a_folder_without_a_model_or_adapter_says_what_to_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    from stages.lib.common import UserError

    with pytest.raises(UserError, match="not an HF model folder.*loradag model"):
        chat.load_model(tmp_path, FP32)
    with pytest.raises(UserError, match="no adapter there.*loradag train"):
        chat.load_for_generation(tiny_model_dir, tmp_path)
