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


@pytest.fixture(scope="module", params=["model", "chatml_default"])
def model_dir(request: pytest.FixtureRequest, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with SmolLM2's own chat template, or with none (so the ChatML fallback applies)."""
    if request.param == "model":
        return tiny_model_dir
    folder = tmp_path_factory.mktemp("no-template")
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


def test_prompt_tokens_are_identical_as_trained_evaluated_and_generated(
    model_dir: Path, make_pairs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pairs = make_pairs(3)
    question = pairs["question"][0]
    tokenizer = chat.load_tokenizer(model_dir)
    expected = chat.prompt_ids(tokenizer, chat.prompt_messages(question, SYSTEM))
    assert tokenizer.decode(expected).endswith("<|im_start|>assistant\n") and SYSTEM in tokenizer.decode(expected)

    cfg = train.TrainConfig(system_prompt=SYSTEM, max_steps=1, batch_size=2, max_length=256)
    trainer = train.build_trainer(
        train.attach_lora(chat.load_model(model_dir, FP32), cfg), tokenizer, cfg, FP32, pairs, pairs, tmp_path, []
    )
    example = trainer.train_dataset[0]
    answer_start = next(i for i, label in enumerate(example["labels"]) if label != -100)
    assert example["input_ids"][:answer_start] == expected  # what trl feeds the model before the answer

    prompts = recorded_prompts(monkeypatch)
    model, left = chat.load_for_generation(model_dir)
    evaluate.generate_answers(model, left, evaluate.eval_items(pairs), SYSTEM, max_new_tokens=2, batch_size=3)
    backend = TransformersChat(TransformersConfig(str(model_dir), batch_size=2, max_new_tokens=2), tmp_path, "g")
    backend.chat([chat.prompt_messages(q, SYSTEM) for q in pairs["question"]], label="test")
    assert len(prompts) == 6
    assert prompts[0] == expected  # evaluate, batched with left padding
    assert prompts[3] == expected  # the transformers backend
    assert prompts[:3] == prompts[3:]


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
