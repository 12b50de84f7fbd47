"""Loading for `studio serve`: the base model and every adapter once, as PEFT named adapters on that base.

Each NAME=PATH is resolved as `studio chat` resolves it (studio.model.source.resolve_folder: run folder, adapter,
checkpoint; the base and the template from the run's spec). A whole model (an export, a full fine-tune) cannot share
the base, and a prompt-style adapter cannot share a batch: both are refused with what to do instead.
"""
from __future__ import annotations

import time
from pathlib import Path

from studio.model.models import ModelError


def load(base: str | None, adapters: dict[str, str], template: str | None = None, quantization_bit: int | None = None, say=print):
    """Resolve and load the base and every adapter (as chat resolves them) -> (model, tokenizer, templates by name,
    the base's name). Raises ModelError naming the adapter."""
    from studio.model import models
    from studio.chat.session import check_template, resolve
    from studio.data.templates import Template

    sources = {}
    for name, path in adapters.items():
        try:
            src = resolve(base, path)
        except ModelError as e:
            raise ModelError(f"--adapter {name}={path}: {e}") from None
        if src.adapter is None:
            raise ModelError(f"--adapter {name}={path} holds a whole model, not an adapter, so it cannot share the base "
                             f"model with others; serve it on its own with --model {path}")
        _check_kind(name, src)
        base = base or src.model
        sources[name] = src
    base_src = resolve(base, None, template)
    base_name = base_name_of(base_src.model)
    if base_name in sources:
        raise ModelError(f"--adapter {base_name}=...: `{base_name}` is the base model's name; give the adapter another name")
    models.check_quantization(quantization_bit)
    tok = models.load_tokenizer(base_src.model)
    templates = {base_name: Template(base_src.template, tok)}
    for name, src in sources.items():
        templates[name] = Template(template or src.template, tok)
    for name, t in templates.items():
        try:
            check_template(t)
        except Exception as e:
            raise ModelError(f"model `{name}`: {e}") from None
    model = _load_weights(base_src.model, sources, quantization_bit, say)
    return model, tok, templates, base_name


def base_name_of(model: str) -> str:
    """The name a request uses for the base model: `default`, or the model folder's name."""
    from studio.model import models

    if model == models.DEFAULT or models.same_base(model, models.DEFAULT):
        return models.DEFAULT
    return Path(model).name if Path(model).expanduser().exists() else model


PROMPT_STYLE = ("PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING", "CPT")


def _check_kind(name: str, src) -> None:
    kind = src.peft_type
    if kind in PROMPT_STYLE:
        raise ModelError(f"--adapter {name}={src.adapter}: a {kind} adapter adds virtual tokens to every prompt and cannot share "
                         "a batch with other adapters; serve LoRA-family adapters (LoRA, DoRA, AdaLoRA, IA3), or chat with "
                         "this one in `studio chat`")


def _load_weights(base: str, sources: dict, quantization_bit: int | None, say):
    import torch

    from studio.model import models
    from studio.spec import ModelSpec

    t0 = time.time()
    model = models.load_model(ModelSpec(name_or_path=base, quantization_bit=quantization_bit), "auto")
    if torch.cuda.is_available() and not quantization_bit:
        model = model.to("cuda")
    if sources:
        from peft import PeftModel

        for i, (name, src) in enumerate(sources.items()):
            try:
                if i == 0:
                    model = PeftModel.from_pretrained(model, str(src.adapter), adapter_name=name)
                else:
                    model.load_adapter(str(src.adapter), adapter_name=name)
            except Exception as e:  # weights of another shape, a damaged file
                raise ModelError(f"--adapter {name}={src.adapter}: cannot load it on `{base}`: {e}") from None
    model.eval()
    say(f"loaded `{base}` with {len(sources)} adapter(s) in {time.time() - t0:.1f} s")
    return model
