"""How train puts examples into a batch, and how often it computes the eval loss.

Batching modes (`train.batching`):

    padded        trl's default: each batch padded to its longest example; the attention mask hides the padding.
    grouped       padded, but the sampler groups examples of similar length (transformers' LengthGroupedSampler):
                  less padding, and batches repeat from epoch to epoch more than with random batches.
    padding_free  the batch's examples are laid end to end in one row, no padding at all; `position_ids` restart
                  at 0 for each example, and transformers builds a block-diagonal causal mask from them (sdpa and
                  eager; flash attention reads the sequence boundaries), so no example sees another. Same random
                  batches, same loss as `padded` (up to float rounding), fewer tokens through the model.
    auto          padding_free on every device (see README "Training" for the measurements).

Not offered: trl's `packing=True` (bin-packs examples into `max_length` rows): it changes the number of
optimizer steps and the batches themselves, so a run with it is not the same training, only faster.

The eval cadence: eval-loss passes are spread so that together (the final one included) they cost about
`train.eval_share` of the training time; the count follows from the set sizes (`eval_steps`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

Mode = Literal["padded", "grouped", "padding_free"]
MODES: tuple[Mode, ...] = ("padded", "grouped", "padding_free")

# An eval example costs about half a train example: a LoRA backward pass skips the frozen weights' gradients,
# so forward + backward is ~2 forwards (bench/train_speed.py measures the share eval really takes).
EVAL_COST_PER_EXAMPLE = 0.5


def pick(choice: str, cuda: bool) -> Mode:
    """The mode a `train.batching` value means on this device."""
    if choice == "auto":
        return "padding_free"  # correct on sdpa/eager/flash attention alike, and the fewest tokens on CPU and GPU
    assert choice in MODES, choice  # TrainConfig checked the value
    return choice  # type: ignore[return-value]


def sft_kwargs(mode: Mode) -> dict[str, Any]:
    """SFTConfig keys of a mode (padding_free goes through `collator`, so trl still truncates to max_length)."""
    return {
        "packing": False,
        "padding_free": False,  # trl's own flag refuses max_length without packing; `collator` does the same job
        "train_sampling_strategy": "group_by_length" if mode == "grouped" else "random",
        # a padding-free batch has no padding: count every token (pad == eos would miscount the answers' ends)
        "include_num_input_tokens_seen": "all" if mode == "padding_free" else "non_padding",
    }


def collator(mode: Mode, pad_token_id: int) -> Any | None:
    """The data collator of a mode (None: trl's default, padding to the longest example of the batch)."""
    if mode != "padding_free":
        return None
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=True)


def total_steps(train_examples: int, batch_size: int, grad_accum: int, epochs: int, max_steps: int) -> int:
    """Optimizer steps of a run, as the trainer counts them (the last, smaller batch of an epoch is a step)."""
    if max_steps > 0:
        return max_steps
    return math.ceil(math.ceil(max(1, train_examples) / batch_size) / grad_accum) * epochs


def eval_steps(steps: int, examples_per_step: int, eval_examples: int, share: float) -> int:
    """Steps between eval-loss passes so that all of them, the final one included, cost about `share` of the
    training: at least one (the final eval loss is a metric), at most one per step."""
    budget = share * steps * examples_per_step / (EVAL_COST_PER_EXAMPLE * max(1, eval_examples))
    evals = min(steps, max(1, math.floor(budget)))
    # every `every` steps, plus one at the end when `every` does not divide `steps`: at most `evals` in all
    return math.ceil(steps / evals)
