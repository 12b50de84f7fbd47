"""The HTTP side of `studio serve`: the OpenAI API over an Engine (FastAPI, run by uvicorn).

    GET  /v1/models              the base model and every adapter, by name
    POST /v1/chat/completions    messages -> answer (stream: server-sent events)
    POST /v1/completions         plain text prompt -> continuation, no template
    GET  /health                 {"status": "ok", ...}; needs no key

Every error is OpenAI's shape, {"error": {"message", "type", "param", "code"}}: 400 for a bad body or a prompt
longer than the model reads, 401 without the key when one is set, 404 for an unknown model or path. A client's
mistake never gives a 500; a client that goes away mid-answer frees its row at the next token.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid

from fastapi import Request

from studio.serve.engine import Engine, Generation, Params

MAX_N = 8
MAX_STOP = 4


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def build_app(engine: Engine, api_key: str | None = None, default_max_tokens: int = 512, say=print):
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    app = FastAPI(title="studio serve", docs_url=None, redoc_url=None, openapi_url=None)

    def fail(e: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse(error_body(e.message, e.kind, e.param, e.code), status_code=e.status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return fail(e)

    @app.exception_handler(HTTPException)
    async def _http_error(request, e: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return fail(ApiError(e.status_code, f"{request.method} {request.url.path}: {e.detail}", code=code))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e):
        where = "; ".join(f"{'.'.join(map(str, x.get('loc', ())))}: {x.get('msg')}" for x in e.errors())
        return fail(ApiError(400, f"bad request: {where}"))

    @app.exception_handler(Exception)
    async def _bug(request, e: Exception):  # a bug on our side: said without a traceback to the client
        say(f"internal error on {request.url.path}: {type(e).__name__}: {e}")
        return fail(ApiError(500, f"internal error: {type(e).__name__}", kind="server_error"))

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if api_key and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            token = given[7:].strip() if given.lower().startswith("bearer ") else ""
            if not secrets.compare_digest(token.encode(), api_key.encode()):
                why = "no API key given" if not token else "the API key is wrong"
                return fail(ApiError(401, f"{why}: send the header `Authorization: Bearer KEY` (the --api-key the server "
                                          "was started with)", code="invalid_api_key"))
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": engine.names, "busy": engine.busy_rows()}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [_model_card(engine, n) for n in engine.names]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str):
        _check_model(engine, name)
        return _model_card(engine, name)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        from studio.chat.session import prompt_ids

        body = await _body(request)
        name = _model(engine, body)
        messages = _messages(body.get("messages"))
        try:
            prompt = prompt_ids(engine.templates[name], messages)
        except Exception as e:  # a role or content the template cannot render
            raise ApiError(400, f"messages: the `{engine.templates[name].name}` template of model `{name}` cannot render them: {e}", "messages") from None
        return await _answer(request, body, name, [prompt], chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _body(request)
        name = _model(engine, body)
        prompts = body.get("prompt")
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ApiError(400, "prompt: expected a string or a list of strings", "prompt")
        return await _answer(request, body, name, [engine.tokenizer(p)["input_ids"] for p in prompts], chat=False)

    async def _answer(request, body: dict, name: str, prompts: list[list[int]], chat: bool):
        params, n, stream = _params(body, default_max_tokens)
        for ids in prompts:
            if not ids:
                raise ApiError(400, "prompt: the prompt is empty", "prompt")
            if len(ids) >= engine.limit:
                raise ApiError(400, f"the prompt is {len(ids)} tokens; model `{name}` reads at most {engine.limit} "
                                    "(prompt and answer together): shorten it", "messages" if chat else "prompt", "context_length_exceeded")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        jobs = []
        for p, ids in enumerate(prompts):
            for k in range(n):
                index = p * n + k
                job_params = Params(params.temperature, params.top_p, min(params.max_tokens, engine.limit - len(ids)), params.stop,
                                    None if params.seed is None else params.seed + k, params.ignore_eos)
                emit = (lambda i: lambda kind, value: loop.call_soon_threadsafe(queue.put_nowait, (i, kind, value)))(index)
                jobs.append(Generation(name, ids, job_params, emit))
        for job in jobs:
            engine.submit(job)
        usage_prompt = sum(len(ids) for ids in prompts) * n
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        if stream:
            opts = body.get("stream_options")
            usage = isinstance(opts, dict) and opts.get("include_usage") is True
            return StreamingResponse(_events(queue, jobs, rid, created, name, chat, usage_prompt if usage else None), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        texts, reasons = [""] * len(jobs), [None] * len(jobs)
        try:
            while any(r is None for r in reasons):
                try:
                    i, kind, value = await asyncio.wait_for(queue.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return JSONResponse({}, status_code=499)
                    continue
                if kind == "delta":
                    texts[i] += value
                elif kind == "end":
                    reasons[i] = value
                else:
                    raise ApiError(500, value, kind="server_error")
        finally:
            for job in jobs:
                job.cancelled.set()  # finished rows are gone already; the others stop at the next token
        made = sum(len(j.made) for j in jobs)
        choices = [({"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None, "finish_reason": r} if chat else
                    {"index": i, "text": t, "logprobs": None, "finish_reason": r}) for i, (t, r) in enumerate(zip(texts, reasons))]
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created, "model": name,
                "choices": choices, "usage": {"prompt_tokens": usage_prompt, "completion_tokens": made, "total_tokens": usage_prompt + made}}

    async def _events(queue, jobs, rid, created, name, chat, usage_prompt):
        kind_name = "chat.completion.chunk" if chat else "text_completion"

        def chunk(i, text=None, reason=None, first=False):
            if chat:
                delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text is not None else {})
                choice = {"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}
            else:
                choice = {"index": i, "text": text or "", "logprobs": None, "finish_reason": reason}
            return "data: " + json.dumps({"id": rid, "object": kind_name, "created": created, "model": name, "choices": [choice]},
                                         ensure_ascii=False) + "\n\n"

        open_rows = set(range(len(jobs)))
        try:
            if chat:
                for i in range(len(jobs)):
                    yield chunk(i, first=True)
            while open_rows:
                i, kind, value = await queue.get()
                if kind == "delta":
                    yield chunk(i, text=value)
                elif kind == "end":
                    open_rows.discard(i)
                    yield chunk(i, reason=value)
                else:
                    yield "data: " + json.dumps(error_body(value, "server_error")) + "\n\n"
                    open_rows.discard(i)
            if usage_prompt is not None:  # stream_options.include_usage: a last chunk with the token counts
                made = sum(len(j.made) for j in jobs)
                yield "data: " + json.dumps({"id": rid, "object": kind_name, "created": created, "model": name, "choices": [],
                                             "usage": {"prompt_tokens": usage_prompt, "completion_tokens": made,
                                                       "total_tokens": usage_prompt + made}}) + "\n\n"
            yield "data: [DONE]\n\n"
        finally:  # the client went away (or the answer is complete): free the rows
            for job in jobs:
                job.cancelled.set()

    return app


def _model_card(engine: Engine, name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "studio",
            "root": engine.base_name, "parent": None if name == engine.base_name else engine.base_name}


def _check_model(engine: Engine, name) -> str:
    if not isinstance(name, str) or not name:
        raise ApiError(400, "model: give the name of a served model (GET /v1/models lists them)", "model")
    if name not in engine.templates:
        raise ApiError(404, f"model `{name}` is not served here; choose one of: {', '.join(engine.names)}", "model", "model_not_found")
    return name


async def _body(request) -> dict:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _model(engine: Engine, body: dict) -> str:
    return _check_model(engine, body.get("model"))


ROLES = ("system", "user", "assistant")


def _messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages: expected a non-empty list of {role, content}", "messages")
    out = []
    for k, m in enumerate(messages):
        where = f"messages[{k}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"{where}: expected an object with role and content", where)
        role, content = m.get("role"), m.get("content")
        if role == "developer":
            role = "system"
        if role not in ROLES:
            raise ApiError(400, f"{where}.role: `{role}` is not one of {', '.join(ROLES)}", f"{where}.role")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise ApiError(400, f"{where}.content: only text parts ({{\"type\": \"text\", \"text\": ...}}) are supported", f"{where}.content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"{where}.content: expected a string", f"{where}.content")
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        raise ApiError(400, "messages: the last message must be the user's (the model answers it)", "messages")
    return out


def _number(body: dict, key: str, default, kind, low, high, low_open=False):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise ApiError(400, f"{key}: expected {'a whole number' if kind is int else 'a number'}, got {json.dumps(value)}", key)
    value = kind(value)
    if value < low or value > high or (low_open and value == low):
        raise ApiError(400, f"{key}: {value} is out of range ({'above' if low_open else 'from'} {low} to {high})", key)
    return value


def _params(body: dict, default_max_tokens: int) -> tuple[Params, int, bool]:
    temperature = _number(body, "temperature", 1.0, float, 0, 2)
    top_p = _number(body, "top_p", 1.0, float, 0, 1, low_open=True)
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, key, default_max_tokens, int, 1, 10**6)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, f"seed: expected a whole number, got {json.dumps(seed)}", "seed")
    n = _number(body, "n", 1, int, 1, MAX_N)
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, f"stop: expected a string or a list of at most {MAX_STOP} non-empty strings", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream: expected true or false", "stream")
    ignore_eos = body.get("ignore_eos", False)  # as vLLM: answers of exactly max_tokens, for benchmarks
    if not isinstance(ignore_eos, bool):
        raise ApiError(400, "ignore_eos: expected true or false", "ignore_eos")
    return Params(temperature, top_p, max_tokens, stop, None if seed is None else seed % 2**62, ignore_eos), n, stream
