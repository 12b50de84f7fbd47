"""Reward functions for examples/grpo_arith.yaml, written the way a user writes their own.

TRL calls each function with the batch as keyword arguments: `completions` (for chat data, each is a list with one
assistant message), `prompts`, and every dataset column (`reference`: the expected number). Return one number per
completion.
"""
import re

ANSWER = re.compile(r"Answer:\s*(-?\d+)")


def answer_format(completions, **kwargs):
    """1.0 for a reply that is just `Answer: <number>`, 0.5 when `Answer: <number>` appears in a longer reply, else 0."""
    scores = []
    for completion in completions:
        text = completion[0]["content"].strip()
        if re.fullmatch(r"Answer:\s*-?\d+\.?", text):
            scores.append(1.0)
        elif ANSWER.search(text):
            scores.append(0.5)
        else:
            scores.append(0.0)
    return scores


def correct_answer(completions, reference, **kwargs):
    """1.0 when the number after `Answer:` is the reference result."""
    scores = []
    for completion, ref in zip(completions, reference):
        found = ANSWER.search(completion[0]["content"])
        scores.append(1.0 if found and found.group(1) == str(ref).strip() else 0.0)
    return scores
