"""The self-instruct requests and how their answers are read (after Stanford Alpaca's prompt.txt, as chat messages).

    messages = instruction_request(examples, n_new)        # "come up with N new, diverse task instructions ..."
    found = parse_instructions(text)                        # the numbered lines of the answer, cleaned
    messages = instance_request(instruction)               # "write an input (or <noinput>) and the output"
    inp, out = parse_instance(text)

Both parsers are lenient: a small model numbers its lines loosely, labels them "Instruction:", wraps them in
quotes, or answers without the Input/Output labels (then the whole answer is the output).
"""
from __future__ import annotations

import re

NOINPUT = "<noinput>"

INSTRUCTION_REQUEST = """You are asked to come up with a set of {total} diverse task instructions. These task instructions \
will be given to a language model, and its answers will be used to train it.

Here are the requirements:
1. Do not repeat verbs or topics across instructions; make them diverse.
2. Mix the kinds of tasks: open-ended writing, classification, editing, question answering, brainstorming, \
reasoning, translation, and others.
3. A language model must be able to do the task: no images, audio, files or actions in the world.
4. Write each instruction in one or two sentences, in English or Chinese (as the examples are).
5. Write only the instruction: no input, no answer.

List of {total} tasks:
{examples}
"""

INSTANCE_REQUEST = """Here is a task instruction:

{instruction}

If the task needs an input to work on (a text, a list, a sentence to translate, a question), write one after \
"Input:"; otherwise write "Input: {noinput}". Then write a good answer to the task after "Output:".

Input:"""


def instruction_request(examples: list[str], n_new: int) -> list[dict]:
    """Chat messages asking for `n_new` new instructions after the numbered `examples`."""
    total = len(examples) + n_new
    lines = "\n".join(f"{i}. {' '.join(e.split())}" for i, e in enumerate(examples, 1))
    text = INSTRUCTION_REQUEST.format(total=total, examples=lines) + f"{len(examples) + 1}."
    return [{"role": "user", "content": text}]


def requirement_lines() -> list[str]:
    """The sentences of the request itself: indexed with the seeds, so that an answer echoing them is dropped as similar."""
    text = INSTRUCTION_REQUEST.split("Here are the requirements:")[1].split("List of")[0]
    return [_NUMBER.sub("", line).strip() for line in text.splitlines() if line.strip()] + \
        [INSTRUCTION_REQUEST.split("\n")[0].format(total="N")]


def instance_request(instruction: str) -> list[dict]:
    return [{"role": "user", "content": INSTANCE_REQUEST.format(instruction=instruction, noinput=NOINPUT)}]


_NUMBER = re.compile(r"^\s*(?:\d{1,3}\s*[.)、:：]|[-*•]|第\s*\d+\s*[条个.、])\s*")
_LABEL = re.compile(r"^\s*(?:instruction|task|指令|任务)\s*[:：]\s*", re.IGNORECASE)
_STOP = re.compile(r"^\s*(?:\d{1,3}\s*[.)]\s*)?(?:input|output|输入|输出)\s*[:：]", re.IGNORECASE)


def parse_instructions(text: str, first_unnumbered: bool = True, truncated: bool = False) -> list[str]:
    """The instructions in a model's answer: one per line (numbered, bulleted or labelled), cleaned up.

    `truncated`: the answer hit the token limit, so its last line is cut short and left out (as Alpaca does), unless
    it is the only one (then the length filters judge it).
    The request ends with the next number ("4."), so the first line of the answer is an instruction even without
    a number (`first_unnumbered`); after it, only numbered or bulleted lines count (the rest is chatter).
    """
    out = []
    for k, line in enumerate(text.splitlines()):
        if not line.strip() or _STOP.match(line):
            continue
        numbered = bool(_NUMBER.match(line))
        if not numbered and not (first_unnumbered and k == 0):
            continue
        item = line
        while _NUMBER.match(item):  # "4. 1. Write ..." (a model that numbers twice)
            item = _NUMBER.sub("", item, count=1)
        item = _LABEL.sub("", item, count=1).strip()
        item = item.strip().strip('"“”「」*').strip()
        if item and not item.endswith((":", "：")):  # "Sure, here is the list of tasks:" is a header, not a task
            out.append(item)
    return out[:-1] if truncated and len(out) > 1 else out


_INPUT = re.compile(r"^\s*(?:input|输入)\s*[:：]\s*", re.IGNORECASE | re.MULTILINE)
_OUTPUT = re.compile(r"^\s*(?:output|输出)\s*[:：]\s*", re.IGNORECASE | re.MULTILINE)


def parse_instance(text: str) -> tuple[str, str]:
    """(input, output) from an answer to instance_request (which ends with "Input:", so the answer starts with the
    input). Without an "Output:" label the whole answer is the output and the input is empty."""
    text = text.strip()
    m = _OUTPUT.search(text)
    if not m:
        return "", _INPUT.sub("", text, count=1).strip()
    inp = _INPUT.sub("", text[:m.start()], count=1).strip()
    out = text[m.end():].strip()
    if inp.lower().strip("<>() ") in ("noinput", "no input", "none", "n/a", "") or inp == NOINPUT:
        inp = ""
    return inp, out
