"""The HTTP side: Label Studio's ML backend protocol on FastAPI.

Endpoints (all work in any order; nothing depends on /setup having come first):
- GET  /health          {"status": "UP", ...} at once, even while the model loads or predicts
- POST /setup           {"model_version"}; remembers the project's config, host and token
- POST /predict         {"results": [one per task, in order]}
- POST /webhook         Label Studio's training protocol (training.py): START_TRAINING (and every N
                        annotation events with SAMKIT_LS_TRAIN_EVERY) starts fine-tuning, 201; other
                        events 200. POST /train starts it too; GET /training shows the runs
- GET  /versions        {"versions": [model_version]}
- POST /validate        checks a labeling config
- POST /precompute      start computing embeddings for a project's images; GET /precompute/{id}
- GET  /stats           encoder calls, cache hits, timings (for tests and monitoring)

Errors answer with a JSON body {"error": "<what went wrong and what to do>"} and a 4xx/5xx
status. Label Studio logs such a failure, and in interactive mode hands it to the caller of
/api/ml/{id}/interactive-annotating as "errors"; in batch mode a task whose image fails gets an
entry without "result", so Label Studio skips it instead of storing an empty prediction.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import time

import anyio
import anyio.to_thread

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

import samkit

from .backend import SamBackend
from .errors import BackendError, RequestTooLargeError
from .models import PrecomputeRequest, PredictRequest, SetupRequest, parse_body
from .settings import Settings

log = logging.getLogger("samkit.label_studio")


class BodyLimitMiddleware:
    """413 for request bodies over the limit, by Content-Length or by counting a streamed body."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                return await _too_large(self.max_bytes)(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise RequestTooLargeError(_too_large_msg(self.max_bytes))
            return message

        await self.app(scope, limited_receive, send)


def _too_large_msg(max_bytes: int) -> str:
    return (f"request body over {max_bytes / 2**20:.0f} MiB (SAMKIT_LS_MAX_REQUEST_MB); tasks carry every "
            "annotation and prediction, so raise the limit for very large tasks")


def _too_large(max_bytes: int) -> JSONResponse:
    return JSONResponse({"error": _too_large_msg(max_bytes)}, status_code=413)


class BasicAuthMiddleware:
    def __init__(self, app: ASGIApp, user: str, password: str) -> None:
        self.app = app
        self.expected = base64.b64encode(f"{user}:{password}".encode()).decode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers", [])).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        ok = scheme.lower() == "basic" and hmac.compare_digest(token.strip(), self.expected)
        if not ok:
            resp = JSONResponse({"error": "this backend needs HTTP basic auth: set the user and password "
                                          "under Authentication in Label Studio's model settings"},
                                status_code=401, headers={"WWW-Authenticate": 'Basic realm="samkit"'})
            return await resp(scope, receive, send)
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None, backend: SamBackend | None = None, load: bool = True) -> FastAPI:
    settings = settings or Settings.from_env()
    backend = backend or SamBackend(settings)
    if load:
        backend.load(background=True)

    app = FastAPI(title="samkit Label Studio ML backend", version=samkit.__version__,
                  docs_url="/docs", redoc_url=None)
    app.state.backend = backend
    app.state.settings = settings

    @app.exception_handler(BackendError)
    async def _backend_error(request: Request, exc: BackendError):
        log.warning("%s %s -> %d: %s", request.method, request.url.path, exc.status_code, exc)
        return JSONResponse({"error": str(exc)}, status_code=exc.status_code)

    @app.exception_handler(samkit.SamkitError)
    async def _samkit_error(request: Request, exc: samkit.SamkitError):
        log.warning("%s %s -> 422: %s", request.method, request.url.path, exc)
        return JSONResponse({"error": str(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"error": f"internal error in the samkit backend: {exc.__class__.__name__}: {exc}"},
                            status_code=500)

    @app.get("/")
    @app.get("/health")
    async def health():
        if backend.model_error:
            return JSONResponse({"status": "ERROR", "model_class": "samkit", "error": backend.model_error},
                                status_code=503)
        return {"status": "UP", "model_class": "samkit.SAM", "model_version": backend.model_version,
                "ready": backend.ready}

    @app.post("/setup")
    async def setup(request: Request):
        if backend.model_error:
            # Label Studio connects a model whose /setup answers 200 (its Validate and Save): a
            # backend that cannot predict must say so here, where the user connects it
            return JSONResponse({"error": f"the samkit backend cannot predict: {backend.model_error}"},
                                status_code=503)
        req = parse_body(SetupRequest, await request.body(), "/setup")
        return await run_in_threadpool(backend.setup, req)

    # Interactive clicks and batch pre-labelling run in separate thread pools, so a long batch
    # never holds every thread a click needs; both stay small so the Python-heavy parts (parsing,
    # RLE, JSON) do not starve the event loop that answers /health.
    interactive_limiter = anyio.CapacityLimiter(max(1, settings.interactive_threads))
    batch_limiter = anyio.CapacityLimiter(max(1, settings.batch_threads))

    def _predict(req: PredictRequest, t0: float) -> bytes:
        out = backend.predict(req)
        content = json.dumps(out, separators=(",", ":")).encode()
        kind = "interactive" if req.params.context and req.params.context.result else "batch"
        log.info("/predict %s: %d task(s), %d region(s) in %.3f s", kind, len(req.tasks),
                 sum(len(r.get("result", [])) for r in out["results"]), time.perf_counter() - t0)
        return content

    @app.post("/predict")
    async def predict(request: Request):
        body = await request.body()
        t0 = time.perf_counter()
        req = await anyio.to_thread.run_sync(parse_body, PredictRequest, body, "/predict", limiter=interactive_limiter)
        del body
        interactive = bool(req.params.context and req.params.context.result)
        content = await anyio.to_thread.run_sync(_predict, req, t0,
                                                 limiter=interactive_limiter if interactive else batch_limiter)
        # Serialised in the worker thread: FastAPI's own encoder would walk big RLE lists on the event loop.
        return Response(content=content, media_type="application/json")

    @app.post("/webhook")
    async def webhook(request: Request):
        # Label Studio's training protocol (training.py): START_TRAINING, and annotation events
        # when SAMKIT_LS_TRAIN_EVERY is set, start fine-tuning in the background.
        from .training import parse_event

        status, body = await run_in_threadpool(backend.trainer.on_webhook, parse_event(await request.body()))
        return JSONResponse(body, status_code=status)

    @app.post("/train")
    async def train(request: Request):
        from .training import parse_event

        data = parse_event(await request.body())
        status, body = await run_in_threadpool(backend.trainer.on_webhook, {**data, "action": "START_TRAINING"})
        return JSONResponse(body, status_code=status)

    @app.get("/training")
    async def training():
        trainer = backend.trainer
        return {"jobs": [job.as_dict() for job in trainer.jobs.values()],
                "models": {pid: version for pid, (_, version) in backend.tuned.items()}}

    @app.get("/versions")
    @app.post("/versions")
    async def versions():
        return {"versions": [backend.model_version], "model_version": backend.model_version}

    @app.post("/validate")
    async def validate(request: Request):
        from .label_config import parse_label_config

        try:
            data = json.loads(await request.body() or b"{}")
        except ValueError:
            data = {}
        parse_label_config((data or {}).get("config") or "")
        return {"status": "ok"}

    @app.post("/precompute", status_code=202)
    async def precompute(request: Request):
        req = parse_body(PrecomputeRequest, await request.body(), "/precompute")
        job = await run_in_threadpool(backend.start_precompute, req)
        return job.as_dict()

    @app.get("/precompute")
    async def precompute_jobs():
        return {"jobs": [j.as_dict() for j in backend.jobs.values()]}

    @app.get("/precompute/{job_id}")
    async def precompute_job(job_id: str):
        job = backend.jobs.get(job_id)
        if job is None:
            return JSONResponse({"error": f"no precompute job {job_id!r}"}, status_code=404)
        return job.as_dict()

    @app.get("/stats")
    async def stats():
        return backend.stats()

    if settings.basic_auth_user:
        app.add_middleware(BasicAuthMiddleware, user=settings.basic_auth_user, password=settings.basic_auth_pass)
    # A click's answer is mostly a brush RLE as a JSON list of small numbers: ~15 KB for a smooth
    # mask, ~600 KB for a ragged one (random weights), which gzip at level 1 makes ~45 KB in ~2 ms.
    # Label Studio's client (requests) asks for gzip and decodes it; one that does not gets JSON.
    app.add_middleware(GZipMiddleware, minimum_size=1024, compresslevel=1)
    app.add_middleware(BodyLimitMiddleware, max_bytes=int(settings.max_request_mb * 2**20))
    return app
