"""Reward functions for examples/grpo_arith.yaml, written the way a user writes their own.

TRL calls each function with the batch as keyword arguments: `completions` (for chat data, each is a list with one
assistant message), `prompts`, and every dataset column (`reference`: the expected number). Return one number per
completion.
"""
import re

NUMBER = re.compile(r"-?\d+")


def number_only(completions, **kwargs):
    """1.0 for a reply that is just a number, 0.5 for one that starts with a number, else 0."""
    scores = []
    for completion in completions:
        text = completion[0]["content"].strip()
        if re.fullmatch(r"-?\d+\.?", text):
            scores.append(1.0)
        elif re.match(r"-?\d", text):
            scores.append(0.5)
        else:
            scores.append(0.0)
    return scores


def first_number_correct(completions, reference, **kwargs):
    """1.0 when the first number in the reply is the reference result."""
    scores = []
    for completion, ref in zip(completions, reference):
        found = NUMBER.search(completion[0]["content"])
        scores.append(1.0 if found and found.group(0) == str(ref).strip() else 0.0)
    return scores
