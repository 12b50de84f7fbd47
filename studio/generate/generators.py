"""Who writes the data: the local model (batched, through the evaluate path) or an OpenAI-compatible endpoint.

    gen = make(spec, say)                       # LocalGenerator or EndpointGenerator
    texts = gen.generate([messages, ...])       # one answer per chat, in order; None: the request failed for good
    gen.failed_requests                         # requests that failed (each retried up to generate.retries times)

Both take their settings from spec.generate, or from `settings`, an object with the same field names (the evaluate
judge passes its own); `field` is the prefix the endpoint's error messages name those settings by.

The endpoint's API key is read from the environment variable that generate.api_key_env names, in the child
process; it is never written to the run folder.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

from studio.spec import SpecError

BACKOFF = 0.5  # seconds before the first retry; doubled for each further one (at most MAX_BACKOFF)
MAX_BACKOFF = 20.0
CONFIG_STATUS = (400, 401, 403, 404, 422)  # the request itself is wrong: retrying cannot help


class GenerateError(SpecError):
    """A generation setting that cannot work (a refused endpoint, a missing API key): the message says what to change."""


class LocalGenerator:
    def __init__(self, spec, say=print, settings=None):
        from studio.evaluate import loading
        from studio.data.templates import Template
        from studio.model.source import resolve_spec

        self.spec, self.g = spec, settings or spec.generate
        entry = resolve_spec(spec.model)  # model.adapter (or the base) on model.name_or_path
        t0 = time.time()
        self.model, self.tokenizer = loading.load(spec, entry)
        self.template = Template(entry.template, self.tokenizer)
        self.failed_requests = 0
        self.calls = 0
        self.truncated: list[bool] = []  # per answer of the last call: it reached max_new_tokens
        say(f"model loaded in {time.time() - t0:.1f}s: {entry.model}" + (f" + adapter {entry.adapter}" if entry.adapter else ""))

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The chat's prompt as the model sees it (the template's tokens up to the answer), left-cut to data.cutoff_len."""
        from studio.evaluate import loading

        return loading.prompt_ids(messages, self.template, self.spec.data.cutoff_len)

    def generate(self, chats: list[list[dict]], say=print) -> list[str | None]:
        from transformers import set_seed

        from studio.evaluate import batchgen

        g = self.g
        prompts = [self.prompt_ids(m) for m in chats]
        cfg = SimpleNamespace(batch_size=g.batch_size, max_new_tokens=g.max_new_tokens, do_sample=g.temperature > 0,
                              temperature=g.temperature or 1.0, top_p=g.top_p, top_k=50)
        set_seed(g.seed + self.calls)  # reproducible, and a different draw each call
        self.calls += 1
        texts, _ = batchgen.generate(self.model, self.tokenizer, self.template, prompts, cfg, say)
        self.truncated = [len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) >= g.max_new_tokens - 2 for t in texts]
        return texts


class EndpointGenerator:
    def __init__(self, spec, say=print, settings=None, field="generate.", error=GenerateError):
        import httpx

        self.g = g = settings or spec.generate
        self.field, self.error = field, error  # how the messages name the settings; the error they raise
        headers = {}
        if g.api_key_env:
            key = os.environ.get(g.api_key_env)
            if not key:
                raise error(f"{field}api_key_env: the environment variable {g.api_key_env} is not set; "
                            f"export {g.api_key_env}=... in the shell that starts the job")
            headers["Authorization"] = f"Bearer {key}"
        self.url = g.base_url.rstrip("/") + "/chat/completions"
        self.client = httpx.Client(headers=headers, timeout=g.timeout,
                                   limits=httpx.Limits(max_connections=g.concurrency, max_keepalive_connections=g.concurrency))
        self.failed_requests = 0
        self.truncated: list[bool] = []  # per answer of the last call: finish_reason was "length"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        say(f"endpoint {self.url}, model {g.endpoint_model}, {g.concurrency} request(s) at a time")

    def one(self, messages: list[dict], errors: list | None = None) -> tuple[str | None, bool]:
        """The answer and whether it was cut at max_tokens; (None, False) when every try failed. `errors`: a list
        each failed try appends its cause to ("HTTP 503", "ConnectError: ...")."""
        import httpx

        g, f = self.g, self.field
        body = {"model": g.endpoint_model, "messages": messages, "max_tokens": g.max_new_tokens,
                "temperature": g.temperature, "top_p": g.top_p}
        for attempt in range(g.retries + 1):
            if self._stop.is_set():
                return None, False
            try:
                r = self.client.post(self.url, json=body)
                if r.status_code in CONFIG_STATUS:
                    raise self.error(f"the endpoint {self.url} refused the request (HTTP {r.status_code}): {r.text[:300]}\n"
                                     f"Check {f}base_url, {f}endpoint_model"
                                     + (f" and the key in ${g.api_key_env}" if g.api_key_env else f" and whether it needs a key ({f}api_key_env)"))
                r.raise_for_status()
                choice = r.json()["choices"][0]
                return choice["message"]["content"] or "", choice.get("finish_reason") == "length"
            except self.error:
                raise
            except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
                with self._lock:
                    self.failed_requests += 1
                if errors is not None:
                    errors.append(f"HTTP {e.response.status_code}" if isinstance(e, httpx.HTTPStatusError)
                                  else f"{type(e).__name__}: {str(e)[:200]}")
                if attempt < g.retries:
                    self._stop.wait(min(BACKOFF * 2 ** attempt, MAX_BACKOFF))
        return None, False

    def generate(self, chats: list[list[dict]], say=print) -> list[str | None]:
        pool = ThreadPoolExecutor(self.g.concurrency)
        try:
            results = list(pool.map(self.one, chats))
            self.truncated = [cut for _, cut in results]
            return [text for text, _ in results]
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self._stop.set()
        self.client.close()


def make(spec, say=print):
    return EndpointGenerator(spec, say) if spec.generate.generator == "endpoint" else LocalGenerator(spec, say)
