"""Prompt templates: chat messages -> text segments, each marked as trained (assistant answers) or not.

`auto` renders with the tokenizer's own chat template. Built-ins serve base models that have none:

    alpaca   Below is an instruction ... \\n\\n### Instruction:\\n{user}\\n\\n### Response:\\n{answer}</s>
    vicuna   A chat between a curious user and ... \\n### Human: {user}\\n### ASSISTANT: {answer}</s>
    chatml   <|im_start|>user\\n{user}<|im_end|>\\n<|im_start|>assistant\\n{answer}<|im_end|>\\n
    default  System: ...\\nHuman: {user}\\nAssistant: {answer}</s>

Every template knows its end-of-turn text (`stop`) for generation, and can write itself as a Jinja chat
template (so an exported tokenizer renders the same prompts as training did).
"""
from __future__ import annotations

from dataclasses import dataclass

from studio.errors import UserError

EOS = "{eos}"


@dataclass(frozen=True)
class Builtin:
    name: str
    system: str  # "{content}" is the system prompt
    user: str  # "{content}" is the user turn; ends with the assistant prefix
    assistant: str  # "{content}" is the answer; EOS marks the tokenizer's eos token
    default_system: str = ""
    stop: str = EOS  # end of an assistant turn
    tool: str = ""  # observation turns; defaults to the user format


_ALPACA_SYS = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
_VICUNA_SYS = ("A chat between a curious user and an artificial intelligence assistant. "
               "The assistant gives helpful, detailed, and polite answers to the user's questions.")

BUILTINS = {
    "alpaca": Builtin("alpaca", "{content}\n\n", "### Instruction:\n{content}\n\n### Response:\n", "{content}" + EOS + "\n\n", _ALPACA_SYS),
    "vicuna": Builtin("vicuna", "{content}\n", "### Human: {content}\n### ASSISTANT: ", "{content}" + EOS + "\n", _VICUNA_SYS),
    "chatml": Builtin("chatml", "<|im_start|>system\n{content}<|im_end|>\n", "<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n",
                      "{content}<|im_end|>\n", "", stop="<|im_end|>",
                      tool="<|im_start|>tool\n{content}<|im_end|>\n<|im_start|>assistant\n"),
    "default": Builtin("default", "System: {content}\n", "Human: {content}\nAssistant: ", "{content}" + EOS + "\n"),
}
NAMES = ["auto", *BUILTINS]


class TemplateError(UserError):
    pass


class Template:
    """Renders messages for one tokenizer. `segments(messages)` -> [(text, trained)]."""

    def __init__(self, name: str, tokenizer):
        if name not in NAMES:
            raise TemplateError(f"model.template: unknown template `{name}`; choose one of: {', '.join(NAMES)}")
        self.name = name
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token or ""
        if name == "auto" and not getattr(tokenizer, "chat_template", None):
            raise TemplateError(
                "model.template: this model's tokenizer has no chat template, so `auto` cannot render chats. "
                f"Choose a built-in template: {', '.join(BUILTINS)} (e.g. model.template=alpaca)."
            )
        self.builtin = BUILTINS.get(name)

    # -- rendering ---------------------------------------------------------------------------------------
    def segments(self, messages: list[dict]) -> list[tuple[str, bool]]:
        """Render a conversation; assistant turns are marked trained (True)."""
        return self._builtin_segments(messages) if self.builtin else self._auto_segments(messages)

    def prompt(self, messages: list[dict]) -> str:
        """The text a model continues to answer `messages` (which end with a user turn)."""
        if self.builtin:
            return "".join(t for t, _ in self._builtin_segments(messages))
        return self._render(messages, add_generation_prompt=True)

    @property
    def stop(self) -> str:
        """Text that ends an assistant turn."""
        if self.builtin:
            return self.builtin.stop.replace(EOS, self.eos)
        return self.eos

    def stop_token_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        tid = self.tokenizer.convert_tokens_to_ids(self.stop) if self.stop else None
        if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
            ids.add(tid)
        return sorted(ids)

    def chat_template(self) -> str:
        """A Jinja chat template that renders like this template (the tokenizer's own for `auto`)."""
        if not self.builtin:
            return self.tokenizer.chat_template
        return jinja(self.builtin, self.eos)

    # -- internals ---------------------------------------------------------------------------------------
    def _builtin_segments(self, messages):
        b = self.builtin
        out = []
        msgs = list(messages)
        system = b.default_system
        if msgs and msgs[0]["role"] == "system":
            system = msgs.pop(0)["content"]
        prefix = b.system.format(content=system) if system else ""
        if prefix:
            out.append((prefix, False))
        for m in msgs:
            if m["role"] == "assistant":
                out.append((b.assistant.replace(EOS, self.eos).replace("{content}", m["content"]), True))
            else:
                fmt = b.tool if (m["role"] == "tool" and b.tool) else b.user
                out.append((fmt.replace("{content}", m["content"]), False))
        return out

    def _render(self, messages, add_generation_prompt=False) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def _auto_segments(self, messages):
        out, done = [], ""
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = self._render(messages[:i], add_generation_prompt=True) if i else ""
            through = self._render(messages[: i + 1])
            if not before.startswith(done) or not through.startswith(before):
                raise TemplateError(
                    "model.template=auto: the tokenizer's chat template does not render conversations incrementally, "
                    f"so answers cannot be located for the loss mask. Choose a built-in template: {', '.join(BUILTINS)}."
                )
            if before[len(done):]:
                out.append((before[len(done):], False))
            out.append((through[len(before):], True))
            done = through
        full = self._render(messages)
        if full.startswith(done) and full[len(done):]:
            out.append((full[len(done):], False))
        return out


def jinja(b: Builtin, eos: str) -> str:
    """Jinja source equivalent to a built-in template (system default, turns, generation prompt)."""
    def lit(s: str) -> str:
        return "'" + s.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"

    def fmt(template: str, var: str) -> str:
        pre, _, post = template.replace(EOS, eos).partition("{content}")
        return " + ".join([x for x in (lit(pre) if pre else "", var, lit(post) if post else "") if x])

    user_pre, _, user_post = b.user.partition("{content}")
    tool = b.tool or b.user
    return (
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set system = messages[0]['content'] -%}{%- set loop_messages = messages[1:] -%}"
        f"{{%- else -%}}{{%- set system = {lit(b.default_system)} -%}}{{%- set loop_messages = messages -%}}{{%- endif -%}}"
        f"{{%- if system -%}}{{{{ {fmt(b.system, 'system')} }}}}{{%- endif -%}}"
        "{%- for message in loop_messages -%}"
        f"{{%- if message['role'] == 'assistant' -%}}{{{{ {fmt(b.assistant, 'message[' + lit('content') + ']')} }}}}"
        f"{{%- elif message['role'] == 'tool' -%}}{{{{ {fmt(tool, 'message[' + lit('content') + ']')} }}}}"
        f"{{%- else -%}}{{{{ {fmt(b.user, 'message[' + lit('content') + ']')} }}}}"
        "{%- endif -%}{%- endfor -%}"
    )
