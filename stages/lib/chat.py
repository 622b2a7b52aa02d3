"""The chat core: a pair as a conversation, a conversation as prompt tokens, and batched generation.

train (what trl tokenizes), evaluate, the transformers backend and serving all build prompts here, so the
prompt a model is trained on is, token for token, the prompt it is asked with:

    messages = prompt_messages(question, system_prompt, history)  # [system, earlier turns..., user]
    rag = prompt_messages(with_passages(question, passages), system_prompt)  # retrieved passages, then the question
    example = training_example(tokenizer, conversation(question, answer, system_prompt, history))  # ids + labels
    ids = prompt_ids(tokenizer, messages)                   # the template's generation prompt, tokenized
    for answer in generate(model, tokenizer, [messages], Sampling(max_new_tokens=96), batch_size=16): ...

A pair's `history` (a multi-turn conversation's earlier turns) may open with the record's own system prompt,
which then replaces `train.system_prompt`. Training learns every assistant turn of a conversation.

Model loading lives here too: the precision a device gets, the pad-token fallback, the ChatML template for
tokenizers that ship none, and `train.chat_template` (model | chatml | a .jinja file under chat_templates/),
applied in `load_tokenizer`, the one place train, evaluate, export and serving get a tokenizer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from stages.lib.common import UserError
from stages.lib.params import ConfigError

Conversation = list[dict[str, str]]

DEFAULT_SYSTEM_PROMPT = "You are loradag's assistant. Answer from what you learned, tersely."

# ChatML, for base models that ship no chat template of their own (and `train.chat_template: chatml`).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TEMPLATE_DIR = Path("chat_templates")  # a DVC dependency of train, evaluate and export: template files live here
NAMED_TEMPLATES = ("model", "chatml")


# ---------------------------------------------------------------- conversations


def prompt_messages(question: str, system_prompt: str, history: Sequence[dict[str, str]] = ()) -> Conversation:
    """What the model is asked for one pair, in training, evaluation and serving alike: the system prompt (the
    record's own when its history opens with one, else `system_prompt`), the earlier turns, the question."""
    turns = list(history)
    system = turns.pop(0) if turns and turns[0]["role"] == "system" else {"role": "system", "content": system_prompt}
    return [system, *turns, {"role": "user", "content": question}]


def conversation(
    question: str, answer: str, system_prompt: str, history: Sequence[dict[str, str]] = ()
) -> Conversation:
    """A pair as the whole conversation training learns: the prompt, then the answer."""
    return [*prompt_messages(question, system_prompt, history), {"role": "assistant", "content": answer}]


def with_passages(question: str, passages: list[str]) -> str:
    """The user turn of a retrieval-augmented question: numbered passages, then the question as asked."""
    context = "\n\n".join(f"[{i}] {passage}" for i, passage in enumerate(passages, 1))
    return f"Passages:\n{context}\n\nAnswer from the passages if they help.\nQuestion: {question}"


def training_example(tokenizer: Any, messages: Conversation) -> dict[str, list[int]]:
    """A tokenized trl row: the conversation's ids, and labels on every assistant turn (its text and end of turn).

    Each assistant span starts where the prompt for that turn (`prompt_ids`, what evaluation and serving feed)
    ends, and stops where the conversation up to that turn ends; system and user tokens are masked (-100).
    """
    ids = conversation_ids(tokenizer, messages)
    labels = [-100] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            start = common_prefix(prompt_ids(tokenizer, messages[:i]), ids)
            end = common_prefix(conversation_ids(tokenizer, messages[: i + 1]), ids)
            labels[start:end] = ids[start:end]
    return {"input_ids": ids, "labels": labels}


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two sequences share (a template may render a turn differently once it is last)."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def with_system_prompt(messages: Conversation, system_prompt: str) -> Conversation:
    """A client's conversation as training asked: the training system prompt first, unless it brings its own."""
    if messages and messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


def system_prompt(params: dict[str, Any]) -> str:
    """`train.system_prompt`, which evaluate and serving must use exactly as train did."""
    value = (params.get("train") or {}).get("system_prompt", DEFAULT_SYSTEM_PROMPT)
    check_system_prompt(value)
    return value


def check_system_prompt(value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"train.system_prompt must be a non-empty string, got {value!r}")


def chat_template(params: dict[str, Any]) -> str:
    """`train.chat_template`, which evaluate, export and serving must apply exactly as train did."""
    value = (params.get("train") or {}).get("chat_template", "model")
    check_chat_template(value)
    return value


def check_chat_template(value: Any) -> None:
    """model | chatml | the path of a .jinja file under chat_templates/ (where DVC tracks it)."""
    if isinstance(value, str) and value in NAMED_TEMPLATES:
        return
    ok = isinstance(value, str) and value.endswith(".jinja") and Path(value).parts[:1] == (TEMPLATE_DIR.name,)
    if not ok or ".." in Path(value).parts:
        raise ConfigError(
            f"train.chat_template must be model, chatml or the path of a .jinja file under {TEMPLATE_DIR}/ "
            f"(a DVC dependency, so an edit reruns what it changes), got {value!r}"
        )


# ---------------------------------------------------------------- tokens


def render_prompt(tokenizer: Any, messages: Conversation) -> str:
    """The conversation through the tokenizer's chat template, ending where the assistant's answer begins."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_ids(tokenizer: Any, messages: Conversation) -> list[int]:
    # The template writes any special tokens itself; the tokenizer must not add a second BOS.
    return tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]


def conversation_ids(tokenizer: Any, messages: Conversation) -> list[int]:
    """A finished conversation (its last assistant turn closed), tokenized as `prompt_ids` tokenizes a prompt."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_batch(tokenizer: Any, conversations: list[Conversation]) -> Any:
    """Prompt ids of several conversations, left-padded to one length (the tokenizer pads on the left)."""
    assert tokenizer.padding_side == "left", "batched generation needs a left-padding tokenizer"
    texts = [render_prompt(tokenizer, messages) for messages in conversations]
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


# ---------------------------------------------------------------- generation


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float = 0.0  # 0 = greedy
    seed: int = 0  # sampled answers still repeat from run to run


@dataclass(frozen=True)
class Answer:
    text: str
    tokens: int  # new tokens up to the first stop token
    latency_s: float  # the batch's time, per question


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """End of sequence, end of turn and padding: whichever comes first ends an answer."""
    stop = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    stop.update(configured if isinstance(configured, list) else [configured])
    return sorted(stop - {None})


def generation_config(model: Any, tokenizer: Any, sampling: Sampling) -> Any:
    """Greedy or sampled decoding up to `max_new_tokens`, ending at the first stop token."""
    from transformers import GenerationConfig

    options: dict[str, Any] = {"do_sample": False}
    if sampling.temperature > 0:
        options = {"do_sample": True, "temperature": sampling.temperature}
    return GenerationConfig(
        max_new_tokens=sampling.max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stop_token_ids(model, tokenizer),
        **options,
    )


def generate(
    model: Any, tokenizer: Any, conversations: list[Conversation], sampling: Sampling, batch_size: int
) -> Iterator[Answer]:
    """Answers to the conversations, in order, `batch_size` at a time (yielded as each batch finishes)."""
    import torch

    stop, config = stop_token_ids(model, tokenizer), generation_config(model, tokenizer, sampling)
    for start in range(0, len(conversations), batch_size):
        batch = conversations[start : start + batch_size]
        inputs = encode_batch(tokenizer, batch).to(model.device)
        if sampling.temperature > 0:
            torch.manual_seed(sampling.seed)
        began = time.perf_counter()
        with torch.inference_mode():
            output = model.generate(**inputs, generation_config=config)
        latency = (time.perf_counter() - began) / len(batch)
        for new in output[:, inputs["input_ids"].shape[1] :].tolist():
            length = next((i for i, token in enumerate(new) if token in stop), len(new))
            text = tokenizer.decode(new[:length], skip_special_tokens=True).strip()
            yield Answer(text=text, tokens=length, latency_s=round(latency, 4))


def stream(model: Any, tokenizer: Any, messages: Conversation, sampling: Sampling) -> Iterator[str]:
    """One answer as text pieces while it is generated (same prompt and decoding as `generate`).

    Joined and stripped, the pieces are `generate`'s text for the conversation (the stop token is special, so
    it is never in a piece). transformers' streamer is fed from a generation thread; its error is raised here.
    """
    import threading

    import torch
    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    inputs = encode_batch(tokenizer, [messages]).to(model.device)
    config = generation_config(model, tokenizer, sampling)
    errors: list[BaseException] = []

    def run() -> None:
        if sampling.temperature > 0:
            torch.manual_seed(sampling.seed)
        try:
            with torch.inference_mode():
                model.generate(**inputs, generation_config=config, streamer=streamer)
        except BaseException as err:  # handed to the caller below; the streamer must still end
            errors.append(err)
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield from (piece for piece in streamer if piece)
    thread.join()
    if errors:
        raise errors[0]


# ---------------------------------------------------------------- models


@dataclass(frozen=True)
class Precision:
    name: Literal["bf16", "fp16", "fp32"]
    dtype: Literal["bfloat16", "float16", "float32"]  # base weights as loaded (and QLoRA compute dtype)
    bf16: bool  # autocast flags for the trainer
    fp16: bool
    lora_fp32: bool  # keep a fp32 master copy of the LoRA params (the fp16 grad scaler cannot unscale fp16 grads)


def pick_precision(cuda_available: bool, bf16_supported: bool) -> Precision:
    """bf16 on CUDA cards that have it, fp16 + fp32 LoRA on older cards, fp32 on CPU (bf16 there is ~12x slower)."""
    if cuda_available and bf16_supported:
        return Precision("bf16", "bfloat16", bf16=True, fp16=False, lora_fp32=False)
    if cuda_available:
        return Precision("fp16", "float16", bf16=False, fp16=True, lora_fp32=True)
    return Precision("fp32", "float32", bf16=False, fp16=False, lora_fp32=False)


def device_precision() -> Precision:
    """The precision for this machine's best device."""
    import torch

    cuda = torch.cuda.is_available()
    return pick_precision(cuda, cuda and torch.cuda.is_bf16_supported())


def prepare_tokenizer(tokenizer: Any) -> str:
    """Give a tokenizer a pad token and a chat template if it lacks them; return where the template came from."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # never attended to: the attention mask hides padding
    if tokenizer.chat_template:
        return "model"
    tokenizer.chat_template = CHATML_TEMPLATE
    return "chatml_default"


def load_tokenizer(path: Path, padding_side: Literal["left", "right"] = "right", chat_template: str = "model") -> Any:
    """The folder's tokenizer with `train.chat_template` applied: its own template, ChatML, or a .jinja file."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, padding_side=padding_side)
    if not tokenizer.chat_template:
        raise UserError(f"{path}: the tokenizer has no chat template; prepare the folder with `loradag model`")
    prepare_tokenizer(tokenizer)
    if chat_template != "model":
        tokenizer.chat_template = CHATML_TEMPLATE if chat_template == "chatml" else read_template(Path(chat_template))
        check_template(tokenizer, f"train.chat_template: {chat_template}")
    return tokenizer


def read_template(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(
            f"train.chat_template: {path} cannot be read ({getattr(err, 'strerror', None) or err})"
        ) from err


PROBE = [
    {"role": "system", "content": "probe system"},
    {"role": "user", "content": "probe question one"},
    {"role": "assistant", "content": "probe answer one"},
    {"role": "user", "content": "probe question two"},
]


def check_template(tokenizer: Any, where: str) -> None:
    """A template must render a multi-turn conversation and keep every turn's text; `where` names it in the error."""
    import jinja2

    try:
        text = render_prompt(tokenizer, PROBE)
    except (jinja2.TemplateError, TypeError, ValueError) as err:
        raise UserError(f"{where}: the template does not render a conversation ({type(err).__name__}: {err})") from err
    dropped = [m["content"] for m in PROBE if m["content"] not in text]
    if dropped:
        raise UserError(f"{where}: the template drops turns: {', '.join(map(repr, dropped))} missing from its output")


def load_model(path: Path, precision: Precision, quantization: Literal["none", "4bit"] = "none") -> Any:
    """A causal LM from an HF folder in the precision's dtype (NF4-quantized on the GPU for QLoRA), on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if not (path / "config.json").is_file():
        raise UserError(f"{path}: not an HF model folder (no config.json); run `loradag model` first")
    dtype = getattr(torch, precision.dtype)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if quantization == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def load_for_generation(base: Path, adapter: Path | None = None, chat_template: str = "model") -> tuple[Any, Any]:
    """(model in eval mode on the best device, left-padding tokenizer with `chat_template` applied); with
    `adapter`, a PEFT model on `base`."""
    import torch

    model = load_model(base, device_precision()).to("cuda" if torch.cuda.is_available() else "cpu")
    if adapter is not None:
        from peft import PeftModel

        if not (adapter / "adapter_config.json").is_file():
            raise UserError(f"{adapter}: no adapter there (no adapter_config.json); run `loradag train` first")
        model = PeftModel.from_pretrained(model, adapter)
    return model.eval(), load_tokenizer(base, padding_side="left", chat_template=chat_template)


def load_adapters(model: Any, adapters: dict[str, Path]) -> Any:
    """Several named LoRA adapters on one loaded base (a PEFT model; `set_adapter(name)` picks one, and
    `disable_adapter()` gives the base), as vLLM's `--lora-modules name=path`."""
    from peft import PeftModel

    for name, path in adapters.items():
        if not (path / "adapter_config.json").is_file():
            raise UserError(f"{path}: no adapter there (no adapter_config.json); run `loradag train` first")
        if isinstance(model, PeftModel):
            model.load_adapter(path, adapter_name=name)
        else:
            model = PeftModel.from_pretrained(model, path, adapter_name=name)
    return model.eval()
