"""One base model with several adapters, generating for many requests at once.

    engine = Engine.load("default", {"pico": "runs/identity_lora"})
    engine.submit(Generation("pico", prompt_ids, Params(temperature=0), emit))   # emit(kind, ...) from the engine thread

Every adapter is loaded once onto the same base (PEFT named adapters); a request's model name picks one, the base
itself runs with the adapters disabled. One thread generates: each round, for every model name that has work,
it switches to that adapter, lets waiting requests join the running batch of that name (their prompt pass runs
on its own, then their KV cache joins the running one, left-padded: studio/evaluate/batchgen.py) and generates one token
for every row. A row leaves the batch, with its slice of the cache, when it ends (end of turn, a stop string,
max_tokens) or when its client went away. Each row samples with its own temperature, top_p and random generator,
so a seed gives the same answer whatever else runs beside it.
"""
from __future__ import annotations

import secrets
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Params:
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 512
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False  # go on past the end of turn up to max_tokens (fixed-length benchmarks)


@dataclass
class Generation:
    """One answer to generate. `emit(kind, value)` is called from the engine thread: ("delta", text) zero or
    more times, then ("end", finish_reason) or ("error", message)."""
    model: str
    prompt: list[int]
    params: Params
    emit: Callable
    cancelled: threading.Event = field(default_factory=threading.Event)
    made: list[int] = field(default_factory=list)
    sent: str = ""
    gen: object = None


@dataclass
class Stats:
    requests: int = 0  # answers finished
    tokens: int = 0  # tokens generated
    cancelled: int = 0
    failed: int = 0


class Engine:
    def __init__(self, model, tokenizer, templates: dict, base_name: str, max_batch: int = 16, say=print):
        import torch

        self.model, self.tokenizer, self.templates, self.base_name = model, tokenizer, templates, base_name
        self.names = list(templates)
        self.max_batch = max_batch
        self.say = say
        self.device = next(model.parameters()).device
        self.limit = getattr(getattr(model, "config", None), "max_position_embeddings", None) or 10**9
        self.stop_ids = {n: set(t.stop_token_ids()) for n, t in templates.items()}
        stops = set().union(*self.stop_ids.values())
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stops)
        self.waiting: dict[str, deque] = {n: deque() for n in self.names}
        self.pools: dict[str, dict | None] = {n: None for n in self.names}
        self.stats = Stats()
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="serve-engine", daemon=True)
        self._torch = torch

    @classmethod
    def load(cls, base: str | None, adapters: dict[str, str], template: str | None = None, quantization_bit: int | None = None,
             max_batch: int = 16, say=print) -> "Engine":
        """Resolve and load the base and every adapter (studio/serve/loading.py); raises ModelError naming the adapter."""
        from studio.serve.loading import load

        return cls(*load(base, adapters, template, quantization_bit, say), max_batch=max_batch, say=say)

    # --- the public side (any thread) --------------------------------------------------------------------

    def start(self) -> "Engine":
        self._thread.start()
        return self

    def close(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout=30)

    def submit(self, job: Generation) -> None:
        if job.model not in self.waiting:
            raise KeyError(job.model)
        job.gen = self._torch.Generator().manual_seed(job.params.seed if job.params.seed is not None else secrets.randbits(62))
        with self._wake:
            self.waiting[job.model].append(job)
            self._wake.notify()

    def busy_rows(self) -> int:
        return sum(len(p["rows"]) for p in self.pools.values() if p) + sum(len(w) for w in self.waiting.values())

    # --- the engine thread -------------------------------------------------------------------------------

    def _loop(self) -> None:
        torch = self._torch
        while True:
            with self._wake:
                while not self._closing and not any(self.waiting.values()) and not any(self.pools.values()):
                    self._wake.wait()
                if self._closing:
                    break
            for name in self.names:
                if not self.waiting[name] and not self.pools[name]:
                    continue
                try:
                    with torch.inference_mode(), self._use(name):
                        self._drop_cancelled(name)
                        if self.waiting[name]:
                            self._admit(name)
                        if self.pools[name]:
                            self._step(name)
                except Exception as e:  # out of memory, a broken adapter: these requests fail, the server goes on
                    self._fail(name, e)
        for name in self.names:  # closing: every open request ends
            for job in list(self.waiting[name]) + (self.pools[name]["rows"] if self.pools[name] else []):
                job.emit("error", "the server is shutting down")

    def _use(self, name: str):
        """Run the model as `name`: the base with adapters disabled, or that adapter switched on."""
        import contextlib

        model = self.model
        if not hasattr(model, "disable_adapter"):
            return contextlib.nullcontext()
        if name == self.base_name:
            return model.disable_adapter()
        if model.active_adapter != name:
            model.set_adapter(name)
        return contextlib.nullcontext()

    def _fail(self, name: str, e: Exception) -> None:
        self.say(f"generation failed for model `{name}`: {type(e).__name__}: {e}")
        pool, self.pools[name] = self.pools[name], None
        for job in pool["rows"] if pool else []:
            self.stats.failed += 1
            job.emit("error", f"generation failed: {type(e).__name__}: {e}")

    def _drop_cancelled(self, name: str) -> None:
        with self._wake:
            gone = [j for j in self.waiting[name] if j.cancelled.is_set()]
            for j in gone:
                self.waiting[name].remove(j)
        self.stats.cancelled += len(gone)
        pool = self.pools[name]
        if pool:
            keep = [r for r, j in enumerate(pool["rows"]) if not j.cancelled.is_set()]
            self.stats.cancelled += len(pool["rows"]) - len(keep)
            self.pools[name] = self._select(pool, keep)

    def _select(self, pool: dict, keep: list[int]) -> dict | None:
        if not keep:
            return None
        if len(keep) < len(pool["rows"]):
            index = self._torch.tensor(keep, device=self.device)
            pool["cache"].batch_select_indices(index)
            pool = {"rows": [pool["rows"][r] for r in keep], "cache": pool["cache"], "ids": pool["ids"][index], "mask": pool["mask"][index]}
            start = int(pool["mask"].any(0).int().argmax())  # padding columns no row needs any more
            if start > 0 and all(type(layer).__name__ == "DynamicLayer" for layer in pool["cache"].layers):
                for layer in pool["cache"].layers:
                    layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
                pool["ids"], pool["mask"] = pool["ids"][:, start:], pool["mask"][:, start:]
        return pool

    def _admit(self, name: str) -> None:
        """Waiting prompts of `name` take the free rows: prompt pass, first token, join the running batch."""
        from transformers import DynamicCache

        from studio.evaluate.batchgen import join, joinable, left_pad

        pool = self.pools[name]
        if pool is not None and not joinable(pool["cache"]):
            return  # a cache that cannot be joined (sliding window): new rows wait for this batch to end
        free = self.max_batch - (len(pool["rows"]) if pool else 0)
        with self._wake:
            rows = [self.waiting[name].popleft() for _ in range(min(free, len(self.waiting[name])))]
        if not rows:
            return
        ids, mask = left_pad([j.prompt for j in rows], self.pad, self.device)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                         cache=DynamicCache(config=self.model.config), use_cache=True, logits_to_keep=1)
        fresh = {"rows": rows, "ids": ids, "mask": mask, "cache": out.cache}
        fresh = self._advance(name, fresh, out.logits[:, -1])
        if fresh is not None:
            self.pools[name] = fresh if pool is None else join(pool, fresh, self.pad)

    def _step(self, name: str) -> None:
        """One new token for every row of `name`'s batch."""
        pool = self.pools[name]
        mask = pool["mask"]
        out = self.model(input_ids=pool["ids"][:, -1:], attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1,
                         cache=pool["cache"], use_cache=True, logits_to_keep=1)
        pool["cache"] = out.cache
        self.pools[name] = self._advance(name, pool, out.logits[:, -1])

    def _advance(self, name: str, batch: dict, logits) -> dict | None:
        """Sample each row's next token, hand out the new text, and return the batch without the rows that ended."""
        torch = self._torch
        picks = [self._sample(row, job.params, job.gen) for row, job in zip(logits, batch["rows"])]
        new = torch.tensor(picks, device=self.device).unsqueeze(1)
        batch["ids"] = torch.cat([batch["ids"], new], dim=1)
        batch["mask"] = torch.cat([batch["mask"], torch.ones_like(new)], dim=1)
        keep = [r for r, (job, token) in enumerate(zip(batch["rows"], picks)) if self._take(name, job, token)]
        return self._select(batch, keep)

    @staticmethod
    def _sample(logits, params: Params, gen) -> int:
        import torch

        if params.temperature <= 0:
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / params.temperature, dim=-1)
        if params.top_p < 1:
            ordered, order = probs.sort(descending=True)
            drop = ordered.cumsum(0) - ordered >= params.top_p  # keep the smallest set that reaches top_p
            probs = probs.scatter(0, order[drop], 0.0)
        return int(torch.multinomial(probs.cpu(), 1, generator=gen))

    def _take(self, name: str, job: Generation, token: int) -> bool:
        """Record a row's new token and send what is safe to send; False when the row has ended."""
        self.stats.tokens += 1
        if job.cancelled.is_set():
            self.stats.cancelled += 1
            return False
        ended = token in self.stop_ids[name] and not job.params.ignore_eos
        if not ended:
            job.made.append(token)
        text = self.tokenizer.decode(job.made, skip_special_tokens=True)
        reason = "stop" if ended else None
        cut = min((i for i in (text.find(s) for s in job.params.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, reason = text[:cut], "stop"
        elif reason is None and (len(job.made) >= job.params.max_tokens or len(job.prompt) + len(job.made) >= self.limit):
            reason = "length"
        safe = len(text) if reason else _safe_end(text, job.params.stop)
        if text.endswith("\ufffd") and not reason:  # half of a multi-byte character: wait for the rest
            safe = min(safe, len(text) - 1)
        if safe > len(job.sent) and text.startswith(job.sent):
            job.emit("delta", text[len(job.sent):safe])
            job.sent = text[:safe]
        if reason:
            self.stats.requests += 1
            job.emit("end", reason)
            return False
        return True


def _safe_end(text: str, stops: list[str]) -> int:
    """How much of `text` can be sent: all but a tail that could be the start of a stop string."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return len(text) - hold
