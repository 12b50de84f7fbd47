"""Chat with a model in this process: a base model, a base model with an adapter, a run folder, or an export.

    echo "Who are you?" | studio chat --adapter runs/identity_lora
    studio chat --model default --system "Answer in one sentence."

A run folder brings its own base model and template (from its spec.yaml), so the chat renders prompts
exactly as training did (the prompt ids are built by the same code that encoded the training data).
Generation streams token by token; `stop()` ends it at the next token; one generation at a time per
session (others wait on a lock). Sampling uses the session's own random generator, so a seed gives the
same answer even while another session samples beside it.
"""
from __future__ import annotations

import gc
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path

from studio.model import models
from studio.model.models import ModelError
from studio.model.source import Resolved, resolve_folder


class ChatError(ModelError):
    """A user's mistake in the chat (an empty message, no model loaded)."""


def _p(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class GenParams:
    """Generation settings; each field's help is shown by `studio chat --help` and the Chat tab."""
    temperature: float = _p(0.7, "Sampling temperature: higher is more varied; 0 is greedy (always the likeliest token).")
    top_p: float = _p(0.9, "Nucleus sampling: keep the smallest set of tokens whose probability adds up to this.")
    top_k: int = _p(50, "Sample among the k likeliest tokens; 0 is off.")
    max_new_tokens: int = _p(512, "Longest answer, in tokens.")
    repetition_penalty: float = _p(1.0, "Above 1 makes repeating earlier tokens less likely; 1 is off.")
    seed: int | None = _p(None, "A fixed seed (0 or more) gives the same answer every time; empty or -1: a fresh answer each time.")

    @staticmethod
    def help(name: str) -> str:
        return GenParams.__dataclass_fields__[name].metadata["help"]

    def check(self) -> "GenParams":
        """Coerce the numbers (a form may send 1 for 1.0) and refuse values out of range."""
        try:
            self.temperature, self.top_p, self.repetition_penalty = float(self.temperature), float(self.top_p), float(self.repetition_penalty)
            self.top_k, self.max_new_tokens = int(self.top_k), int(self.max_new_tokens)
            self.seed = None if self.seed in (None, "") or int(self.seed) < 0 else int(self.seed)
        except (TypeError, ValueError) as e:
            raise ChatError(f"bad generation setting: {e}") from None
        bad = [f"{k}={v} ({why})" for k, v, ok, why in (
            ("temperature", self.temperature, self.temperature >= 0, "0 or more; 0 is greedy"),
            ("top_p", self.top_p, 0 < self.top_p <= 1, "above 0, at most 1"),
            ("top_k", self.top_k, self.top_k >= 0, "0 or more; 0 is off"),
            ("max_new_tokens", self.max_new_tokens, self.max_new_tokens >= 1, "1 or more"),
            ("repetition_penalty", self.repetition_penalty, self.repetition_penalty > 0, "above 0; 1 is off")) if not ok]
        if bad:
            raise ChatError("bad generation setting: " + ", ".join(bad))
        return self


def resolve(model: str | None = None, adapter: str | None = None, template: str | None = None) -> Resolved:
    """Model name, adapter or run folder, template -> what to load (studio.model.source.resolve_folder). A whole
    model (a full fine-tune, an export) given as the adapter beside another model is refused. Raises ModelError."""
    src = resolve_folder(adapter, model, template)
    if adapter and src.adapter is None and model and not models.same_base(model, src.model):
        raise ModelError(f"{Path(adapter).expanduser()} holds a whole model ({src.model}), not an adapter; load it as the "
                         f"model, without `{model}`")
    return src


def prompt_ids(template, messages: list[dict]) -> list[int]:
    """Token ids that ask the model to answer `messages` (ending with a user turn), encoded as in training."""
    from studio.data.encode import IGNORE, encode_chat

    ids, labels, _ = encode_chat(messages + [{"role": "assistant", "content": ""}], template, 10**9, mask_history=True)
    start = next((i for i, label in enumerate(labels) if label != IGNORE), len(ids))
    return ids[:start]


def _adapter_tokenizer(folder: Path, fallback):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError):
        return fallback
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def check_template(template) -> None:
    """Refuse a template that cannot render a chat with this tokenizer (raises TemplateError)."""
    from studio.data.templates import TemplateError

    probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"},
             {"role": "user", "content": "v"}]
    try:
        ids = prompt_ids(template, probe)
    except TemplateError:
        raise
    except Exception as e:  # a Jinja template that raises, a tokenizer that cannot encode
        raise TemplateError(f"template `{template.name}` does not fit this tokenizer: {e}") from None
    if not ids:
        raise TemplateError(f"template `{template.name}` renders an empty prompt with this tokenizer; choose another")
    if not template.stop_token_ids():
        raise TemplateError(f"template `{template.name}`: the tokenizer has no end-of-turn token, so answers would never stop")


def _sampler(params: GenParams, generator):
    """Logits processors that sample with the session's own generator; generate() then picks that token greedily."""
    import torch
    from transformers import (LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper,
                              TopPLogitsWarper)

    class SeededSample(LogitsProcessor):
        def __call__(self, input_ids, scores):
            probs = torch.softmax(scores.float(), dim=-1)
            pick = torch.multinomial(probs.cpu(), 1, generator=generator).to(scores.device)
            out = torch.full_like(scores, float("-inf"))
            return out.scatter(1, pick, 0.0)

    if params.temperature <= 0:
        return LogitsProcessorList()
    procs = [TemperatureLogitsWarper(params.temperature)]
    if params.top_k and params.top_k > 0:
        procs.append(TopKLogitsWarper(params.top_k))
    if 0 < params.top_p < 1:
        procs.append(TopPLogitsWarper(params.top_p))
    return LogitsProcessorList([*procs, SeededSample()])


class ChatSession:
    """One loaded model (with its tokenizer and template); stream() answers a conversation."""

    def __init__(self):
        self.model = self.tokenizer = self.template = self.source = None
        self._lock = threading.Lock()  # one generation at a time
        self._load_lock = threading.Lock()
        self._stop = threading.Event()

    @property
    def loaded(self) -> bool:
        return self.model is not None

    @property
    def label(self) -> str:
        return self.source.label if self.source else ""

    def load(self, model: str | None = None, adapter: str | None = None, template: str | None = None,
             quantization_bit: int | None = None) -> str:
        """Load a model, releasing the one loaded before. Bad input raises before anything is released.
        `quantization_bit` (4 or 8) loads the base quantized with bitsandbytes, on a CPU too."""
        from studio.data.templates import Template

        with self._load_lock:
            src = resolve(model, adapter, template)
            quant, forced = src.quantization_bit, False  # an adapter trained on a quantized base: so loaded on a GPU
            if quantization_bit is not None:
                models.check_quantization(quantization_bit)
                quant, forced = quantization_bit, True
            tok = models.load_tokenizer(src.model)
            if src.adapter is not None and (src.adapter / "tokenizer_config.json").exists():
                tok = _adapter_tokenizer(src.adapter, tok)  # saved with the adapter, with the template it trained with
            tmpl = Template(src.template, tok)
            check_template(tmpl)
            self.unload()  # everything checked: free the old model before loading the new one
            with self._lock:
                self.model = self._load_weights(src, quant, forced)
                self.tokenizer, self.template, self.source = tok, tmpl, src
        note = ""
        if template and src.run_template and template != src.run_template:
            note = f"\nnote: this model was trained with template `{src.run_template}`; rendering with `{template}` instead"
        return f"loaded {src.label} (template {tmpl.name})" + note

    @staticmethod
    def _load_weights(src: Resolved, quantization_bit: int | None, forced: bool):
        """The weights; `quantization_bit` loads the base quantized on a GPU, and on a CPU too when `forced` (asked for)."""
        import torch

        from studio.spec import ModelSpec

        cuda = torch.cuda.is_available()
        spec_model = ModelSpec(name_or_path=src.model, quantization_bit=quantization_bit if cuda or forced else None)
        model = models.load_model(spec_model, "auto")
        if cuda and not spec_model.quantization_bit:
            model = model.to("cuda")
        if src.adapter is not None:
            from peft import PeftModel

            try:
                model = PeftModel.from_pretrained(model, str(src.adapter))
            except Exception as e:  # weights of another shape, a damaged file
                del model
                gc.collect()
                raise ModelError(f"cannot load the adapter {src.adapter} on `{src.model}`: {e}") from None
        model.eval()
        return model

    def unload(self) -> None:
        """Release the model (and its memory); a running generation is stopped first."""
        self.stop()
        with self._lock:
            self.model = self.tokenizer = self.template = self.source = None
            self._stop.clear()
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def stop(self) -> None:
        """End the running generation at the next token (the text so far is kept)."""
        self._stop.set()

    def messages(self, history: list[dict], message: str, system: str = "") -> list[dict]:
        return ([{"role": "system", "content": system}] if system else []) + \
            [{"role": m["role"], "content": m["content"]} for m in history] + [{"role": "user", "content": message}]

    def stream(self, history: list[dict], message: str, system: str = "", params: GenParams | None = None):
        """Yield the answer to `message` after `history` ([{role, content}]) piece by piece, as it is generated."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        if not message or not message.strip():
            raise ChatError("the message is empty; type something to send")
        if not self.loaded:
            raise ChatError("no model loaded; load a model first")
        params = (params or GenParams()).check()
        with self._lock:
            if not self.loaded:
                raise ChatError("the model was unloaded; load a model first")
            self._stop.clear()
            model, tok = self.model, self.tokenizer
            ids = prompt_ids(self.template, self.messages(history, message, system))
            limit = getattr(model.config, "max_position_embeddings", None) or 10**9
            if len(ids) >= limit:
                raise ChatError(f"the conversation is {len(ids)} tokens, more than this model reads ({limit}); clear it to start over")
            device = next(model.parameters()).device
            gen = torch.Generator().manual_seed(params.seed if params.seed is not None else secrets.randbits(62))
            stop_event = self._stop

            class Stop(StoppingCriteria):
                def __call__(self, input_ids, scores, **kw):
                    return torch.full((input_ids.shape[0],), stop_event.is_set(), dtype=torch.bool, device=input_ids.device)

            streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
            failure = []
            from transformers import GenerationConfig

            config = GenerationConfig(max_new_tokens=min(params.max_new_tokens, limit - len(ids)), do_sample=False,
                                      repetition_penalty=params.repetition_penalty, eos_token_id=self.template.stop_token_ids(),
                                      pad_token_id=tok.pad_token_id)

            def work():
                try:
                    with torch.inference_mode():
                        model.generate(input_ids=torch.tensor([ids], device=device), attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
                                       generation_config=config, logits_processor=_sampler(params, gen),
                                       stopping_criteria=StoppingCriteriaList([Stop()]), streamer=streamer)
                except Exception as e:  # surfaced to the reader below
                    failure.append(e)
                    streamer.end()

            thread = threading.Thread(target=work, daemon=True)
            thread.start()
            try:
                for piece in streamer:
                    if piece:
                        yield piece
            finally:
                self._stop.set()  # a reader that stops early ends the generation too
                thread.join()
                self._stop.clear()
            if failure:
                raise ModelError(f"generation failed: {failure[0]}")

    def reply(self, history: list[dict], message: str, system: str = "", params: GenParams | None = None) -> str:
        """The whole answer at once."""
        return "".join(self.stream(history, message, system, params)).strip()
