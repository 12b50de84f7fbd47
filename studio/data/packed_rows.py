"""Packing without a varlen attention kernel: each packed bin stays one row of at most cutoff_len tokens.

TRL's padding-free collator concatenates a micro-batch's packed rows into one row of batch x cutoff_len
tokens. A varlen kernel (FlashAttention, flex attention) attends only within each example; SDPA and eager
attention instead compute the whole (batch x cutoff_len)^2 masked square. This collator keeps the rows apart:
a (batch, longest row) tensor whose position_ids restart at every example and no attention mask, from which
transformers builds a block-diagonal causal mask per row (`masking_utils.find_packed_sequence_indices`).
Attention then costs batch x cutoff_len^2, as with padded batches, and examples still cannot see each other.
"""
from __future__ import annotations

from trl.trainer.sft_trainer import DataCollatorForLanguageModeling


class PackedRowsCollator(DataCollatorForLanguageModeling):
    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        super().__init__(pad_token_id=pad_token_id, padding_free=False, return_position_ids=True, pad_to_multiple_of=pad_to_multiple_of)

    def torch_call(self, examples):
        out = super().torch_call(examples)
        out.pop("attention_mask", None)  # boundaries come from position_ids
        out["labels"][out["position_ids"] == 0] = -100  # no loss across a boundary (nor on the padded tail)
        return out


def use_rows(trainer) -> None:
    """Replace the padding-free collator of a packing SFTTrainer (TRL refuses a custom one at construction)."""
    trainer.data_collator = PackedRowsCollator(trainer.processing_class.pad_token_id, trainer.args.pad_to_multiple_of)
