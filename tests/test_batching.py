"""Batching modes and eval cadence: no example sees another, the loss mask holds, evals stay within budget."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from stages import train
from stages.lib import batching, chat
from stages.lib.params import ConfigError, from_dict
from stages.train import TrainConfig

FP32 = chat.pick_precision(cuda_available=False, bf16_supported=False)
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[Any, Any]:
    model = chat.load_model(tiny_model_dir, FP32)
    return model.eval(), chat.load_tokenizer(tiny_model_dir)


def trainer_for(mode: str, tiny: tuple[Any, Any], pairs: Any, tmp_path: Path) -> Any:
    model, tokenizer = tiny
    cfg = TrainConfig(max_steps=1, batch_size=2, max_length=128, batching=mode)
    return train.build_trainer(model, tokenizer, cfg, FP32, pairs, pairs, tmp_path, [])


def two_examples(trainer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A short and a long example of the trainer's own (tokenized, label-masked) train set."""
    rows = sorted(trainer.train_dataset, key=lambda row: len(row["input_ids"]))
    short, long = rows[0], rows[-1]
    assert len(long["input_ids"]) > len(short["input_ids"])  # so padding and packing both happen
    return short, long


def forward(model: Any, batch: dict[str, Any], **options: Any) -> Any:
    import torch

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        return model(**inputs, use_cache=False, **options).logits  # use_cache=False: as trl's compute_loss


def logits_of(batch: dict[str, Any], logits: Any, index: int) -> Any:
    """The logits of the `index`-th example of a batch: its row (padded) or its span (padding-free)."""
    if "position_ids" in batch and batch["input_ids"].shape[0] == 1:
        starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
        return logits[0, starts[index] : starts[index + 1]]
    length = int(batch["attention_mask"][index].sum())
    return logits[index, :length]


@pytest.mark.parametrize("mode", batching.MODES)
def test_an_example_gets_the_same_logits_alone_and_batched_with_another(
    mode: str, tiny: tuple[Any, Any], make_pairs: Any, tmp_path: Path
) -> None:
    trainer = trainer_for(mode, tiny, make_pairs(1).vstack(make_pairs(1, start=123456)), tmp_path)
    short, long = two_examples(trainer)
    collate = trainer.data_collator
    alone = forward(tiny[0], collate([short]))[0]
    batch = collate([long, short])  # the short one second: after the long one (padding-free) or padded
    together = logits_of(batch, forward(tiny[0], batch), 1)
    assert together.shape == alone.shape == (len(short["input_ids"]), tiny[0].config.vocab_size)
    assert (together - alone).abs().max().item() < TOLERANCE
    if mode == "padding_free":
        assert batch["input_ids"].shape == (1, len(short["input_ids"]) + len(long["input_ids"]))  # no padding


@pytest.mark.parametrize("mode", batching.MODES)
def test_the_batch_loss_is_the_token_weighted_mean_of_each_example_alone(
    mode: str, tiny: tuple[Any, Any], make_pairs: Any, tmp_path: Path
) -> None:
    trainer = trainer_for(mode, tiny, make_pairs(1).vstack(make_pairs(1, start=123456)), tmp_path)
    short, long = two_examples(trainer)

    def loss_and_tokens(examples: list[dict[str, Any]]) -> tuple[float, int]:
        batch = trainer.data_collator(examples)
        tokens = int((batch["labels"][:, 1:] != -100).sum())  # the targets after the shift by one
        return trainer.compute_loss(tiny[0], batch).item(), tokens

    (loss_short, n_short), (loss_long, n_long) = loss_and_tokens([short]), loss_and_tokens([long])
    loss_both, n_both = loss_and_tokens([long, short])
    assert n_both == n_short + n_long
    assert loss_both == pytest.approx((loss_short * n_short + loss_long * n_long) / n_both, abs=TOLERANCE)


def test_without_the_packed_mask_the_second_example_sees_the_first(
    tiny: tuple[Any, Any], make_pairs: Any, tmp_path: Path
) -> None:
    """The check above can fail: the same padding-free batch under a plain causal mask (what a KV cache, or
    positions that do not restart, make transformers use) gives the second example different logits."""
    import torch

    trainer = trainer_for("padding_free", tiny, make_pairs(1).vstack(make_pairs(1, start=123456)), tmp_path)
    short, long = two_examples(trainer)
    alone = forward(tiny[0], trainer.data_collator([short]))[0]
    batch = trainer.data_collator([long, short])
    positions = torch.arange(batch["input_ids"].shape[1])[None]
    with torch.no_grad():  # a cache present: transformers skips the packed-sequence mask
        cached = tiny[0](input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=True).logits
    for logits in (cached, forward(tiny[0], {"input_ids": batch["input_ids"], "position_ids": positions})):
        leaked = logits[0, len(long["input_ids"]) :]
        assert leaked.shape == alone.shape and (leaked - alone).abs().max().item() > 1e-3


def test_padding_free_still_trains_on_the_answers_only(tiny: tuple[Any, Any], make_pairs: Any, tmp_path: Path) -> None:
    pairs = make_pairs(3)
    trainer = trainer_for("padding_free", tiny, pairs, tmp_path)
    rows = list(trainer.train_dataset)
    batch = trainer.data_collator(rows)
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [len(ids)]
    tokenizer = tiny[1]
    for (begin, end), answer in zip(zip(starts, starts[1:]), pairs["answer"], strict=True):
        trained = [i for i in range(begin, end) if labels[i] != -100]
        assert trained == list(range(trained[0], end))  # one span that runs to the example's end
        assert [labels[i] for i in trained] == ids[trained[0] : end]
        assert tokenizer.decode(ids[trained[0] : end]) == answer + "<|im_end|>\n"
        assert tokenizer.decode(ids[begin : trained[0]]).endswith("<|im_start|>assistant\n")


def test_each_mode_sets_its_sampler_and_collator(tiny: tuple[Any, Any], make_pairs: Any, tmp_path: Path) -> None:
    grouped = trainer_for("grouped", tiny, make_pairs(2), tmp_path)
    assert grouped.args.train_sampling_strategy == "group_by_length"
    assert grouped.data_collator.padding_free is False
    free = trainer_for("padding_free", tiny, make_pairs(2), tmp_path)
    assert free.args.train_sampling_strategy == "random" and free.data_collator.padding_free is True
    assert free.args.include_num_input_tokens_seen == "all"  # no padding to leave out; pad == eos would miscount
    assert batching.pick("auto", cuda=False) == batching.pick("auto", cuda=True) == "padding_free"


@pytest.mark.parametrize(
    ("train_examples", "eval_examples", "epochs", "max_steps", "every"),
    [
        (66, 14, 3, -1, 9),  # the default run: 27 steps, evals at 9, 18, 27
        (10, 3, 3, 2, 2),  # a capped quick run: the final eval only
        (1000, 1, 1, -1, 1),  # a one-question eval set: every step
    ],
)
def test_eval_cadence_follows_the_set_sizes(
    train_examples: int, eval_examples: int, epochs: int, max_steps: int, every: int
) -> None:
    cfg = TrainConfig(epochs=epochs, max_steps=max_steps, batch_size=8)
    assert train.eval_cadence(cfg, train_examples, eval_examples) == every


@pytest.mark.parametrize("share", [0.02, 0.1, 0.3, 1.0])
@pytest.mark.parametrize(("steps", "eval_examples"), [(27, 14), (100, 7), (5, 200), (1, 1)])
def test_eval_passes_stay_within_the_share(share: float, steps: int, eval_examples: int) -> None:
    every = batching.eval_steps(steps, 8, eval_examples, share)
    evals = steps // every + (steps % every != 0)  # the trainer's scheduled ones, plus the final one
    cost = evals * eval_examples * batching.EVAL_COST_PER_EXAMPLE
    assert 1 <= every <= steps
    assert evals == 1 or cost <= share * steps * 8  # one eval always runs: the final eval loss is a metric


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"batching": "packed"}, "train.batching must be one of auto, padded, grouped, padding_free"),
        ({"eval_share": 0}, r"train.eval_share must be in \(0, 1\], got 0"),
    ],
)
def test_bad_batching_params_name_the_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(TrainConfig, raw, "train")


def test_default_config_uses_auto_batching() -> None:
    assert dataclasses.asdict(TrainConfig())["batching"] == "auto"
