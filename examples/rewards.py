"""Reward functions for examples/grpo_arith.yaml, written the way a user writes their own.

TRL calls each function with the batch as keyword arguments: `completions` (for chat data, each is a list with one
assistant message), `prompts`, and every dataset column (`reference`: the expected number). Return one number per
completion.
"""
import re

NUMBER = re.compile(r"-?\d+")


def last_number_correct(completions, reference, **kwargs):
    """1.0 when the last number in the reply is the reference result ("3 + 4 = 7" and "7" both count)."""
    scores = []
    for completion, ref in zip(completions, reference):
        found = NUMBER.findall(completion[0]["content"])
        scores.append(1.0 if found and found[-1] == str(ref).strip() else 0.0)
    return scores


def number_only(completions, **kwargs):
    """1.0 for a reply that is a number and nothing else, else 0 (no partial credit: a reply that merely starts with
    a number, like "3 + 4 equals", would otherwise be a place to stop learning)."""
    return [1.0 if re.fullmatch(r"-?\d+\.?", completion[0]["content"].strip()) else 0.0 for completion in completions]
