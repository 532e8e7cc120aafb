"""`samkit label-studio ...` commands. Standard library only at import time.

    samkit label-studio serve [--host 0.0.0.0] [--port 9090] [--model ...] [--checkpoint ...] ...
    samkit label-studio precompute --project 3 [--backend http://localhost:9090]
    samkit label-studio config            # print the example labeling config
    samkit label-studio finetune export.json --images DIR -o tuned.pt [--model ...] [--epochs ...]

Every option has an environment variable (see `samkit label-studio serve --help`); flags win.
"""

from __future__ import annotations

import argparse
import os
import sys

_INSTALL_HINT = 'the Label Studio backend needs its extra: pip install "samkit[label-studio]"'


def add_commands(subparsers) -> None:
    ls = subparsers.add_parser("label-studio", help="Label Studio ML backend (interactive SAM pre-labelling)",
                               description="Label Studio ML backend: interactive SAM pre-labelling.")
    sub = ls.add_subparsers(dest="ls_command", metavar="{serve,precompute,config,finetune}")
    sub.required = True

    serve = sub.add_parser(
        "serve", help="run the ML backend server",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the ML backend. Connect it in Label Studio under Project > Settings > Model "
                    "(URL http://<this host>:<port>, 'Interactive preannotations' on).",
        epilog=_env_help())
    serve.add_argument("--host", default=os.environ.get("SAMKIT_LS_HOST", "0.0.0.0"),
                       help="interface to listen on (env SAMKIT_LS_HOST, default 0.0.0.0)")
    # the environment is read when serving, so a bad value cannot break unrelated commands
    serve.add_argument("--port", type=int, default=None,
                       help="port (env SAMKIT_LS_PORT, default 9090)")
    serve.add_argument("--model", help="model name or checkpoint path (env SAMKIT_MODEL, default mobile_sam)")
    serve.add_argument("--checkpoint", help="checkpoint file, wins over --model (env SAMKIT_CHECKPOINT)")
    serve.add_argument("--device", help="cpu, cuda, cuda:1, mps (env SAMKIT_DEVICE, default: a GPU if any)")
    serve.add_argument("--dtype", help="float32, bfloat16, float16 (GPU only) (env SAMKIT_DTYPE)")
    serve.add_argument("--click-dtype", dest="click_dtype",
                       help="a click's decoder precision: auto, float32, bfloat16 (env SAMKIT_LS_CLICK_DTYPE, "
                            "default auto: bfloat16 on a CPU with bfloat16 dot products)")
    serve.add_argument("--threads", type=int,
                       help="PyTorch CPU threads (env SAMKIT_LS_THREADS; default 1 on a CPU, which keeps clicks "
                            "fast when other work shares the CPU; 0: all cores)")
    serve.add_argument("--label-studio-url", dest="label_studio_url", help="env LABEL_STUDIO_URL")
    serve.add_argument("--label-studio-api-key", dest="label_studio_api_key",
                       help="legacy token or personal access token (env LABEL_STUDIO_API_KEY)")
    serve.add_argument("--basic-auth-user", dest="basic_auth_user", help="env SAMKIT_LS_BASIC_AUTH_USER")
    serve.add_argument("--basic-auth-pass", dest="basic_auth_pass", help="env SAMKIT_LS_BASIC_AUTH_PASS")
    serve.add_argument("--cache-size", dest="cache_size", type=int,
                       help="embeddings in memory (env SAMKIT_LS_CACHE_SIZE)")
    serve.add_argument("--cache-dir", dest="cache_dir", help="also keep embeddings on disk (env SAMKIT_LS_CACHE_DIR)")
    serve.add_argument("--cache-dir-mb", dest="cache_dir_mb", type=float,
                       help="most disk space of the embeddings there, MiB (env SAMKIT_LS_CACHE_DIR_MB, default 2048)")
    serve.add_argument("--output", choices=("auto", "brush", "polygon"), help="env SAMKIT_LS_OUTPUT")
    serve.add_argument("--model-version", dest="model_version", help="env SAMKIT_LS_MODEL_VERSION")
    serve.add_argument("--text-model", dest="text_model",
                       help="text prompts (a TextArea in the config): GroundingDINO or OWLv2, a Hugging Face id or "
                            "a local folder (env SAMKIT_LS_TEXT_MODEL, default IDEA-Research/grounding-dino-tiny; "
                            "thresholds: SAMKIT_LS_BOX_THRESHOLD, SAMKIT_LS_TEXT_THRESHOLD)")
    serve.add_argument("--log-level", dest="log_level", help="env SAMKIT_LS_LOG_LEVEL (default INFO)")
    serve.set_defaults(func=_serve)

    pre = sub.add_parser("precompute", help="compute the image embeddings of a whole project on a running backend")
    pre.add_argument("--project", type=int, required=True, help="Label Studio project id")
    pre.add_argument("--backend", default=os.environ.get("SAMKIT_LS_BACKEND_URL", "http://127.0.0.1:9090"),
                     help="the running backend (env SAMKIT_LS_BACKEND_URL, default http://127.0.0.1:9090)")
    pre.add_argument("--basic-auth-user", dest="basic_auth_user", default=os.environ.get("SAMKIT_LS_BASIC_AUTH_USER"))
    pre.add_argument("--basic-auth-pass", dest="basic_auth_pass", default=os.environ.get("SAMKIT_LS_BASIC_AUTH_PASS"))
    pre.add_argument("--predictions", action="store_true",
                     help="also pre-label: store each task's batch prediction in Label Studio (masks for its "
                          "rectangles, else segment-everything), skipping tasks that already have one")
    pre.add_argument("--no-wait", dest="wait", action="store_false", help="start the job and return")
    pre.set_defaults(func=_precompute)

    cfg = sub.add_parser("config", help="print a ready labeling config (brush, polygon, smart keypoint and rectangle)")
    cfg.set_defaults(func=_config)

    from samkit.finetune.cli import add_training_options

    ft = sub.add_parser(
        "finetune", help="fine-tune the mask decoder on a project's JSON export (brushes and polygons)",
        description="Fine-tune a model's mask decoder on a Label Studio JSON export (Export > JSON): each task's "
                    "newest annotation, its brush masks and polygons (samkit finetune's training). A running "
                    "backend trains without an export: press Start Training on its model card.")
    ft.add_argument("export", help="the project's JSON export file")
    ft.add_argument("--images", help="folder holding the tasks' images (default: the export's folder); uploaded "
                    "files are also found by their name without Label Studio's 8-character prefix")
    ft.add_argument("--val", help="a second JSON export to validate on (default: --val-fraction of the tasks)")
    ft.add_argument("--classes", help="comma-separated labels to train on (default: all)")
    ft.add_argument("--model", "-m", default="mobile_sam", help="base model name or checkpoint path")
    ft.add_argument("--output", "-o", required=True, help="the tuned checkpoint to write (e.g. tuned.pt)")
    add_training_options(ft)
    ft.set_defaults(func=_finetune)


def _finetune(args) -> int:
    import samkit
    from samkit.finetune.cli import training_kwargs

    from .training import read_export

    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    train = read_export(args.export, args.images, classes)
    val = read_export(args.val, args.images, classes) if args.val else None
    result = samkit.finetune(args.model, train, args.output, val, **training_kwargs(args))
    print(f"wrote {result.checkpoint} (kept epoch {result.best_epoch}); serve it: samkit label-studio serve "
          f"--model {result.checkpoint}")
    return 0


def _env_help() -> str:
    from . import settings as _settings  # stdlib-only module body except its docstring table

    return "environment variables:\n" + "\n".join(
        line for line in (_settings.__doc__ or "").splitlines() if line.startswith("|"))


def _serve(args) -> int:
    try:
        import uvicorn

        from .app import create_app
        from .settings import Settings, env_number
    except ImportError as e:
        print(f"samkit: error: {_INSTALL_HINT} ({e})", file=sys.stderr)
        return 2
    import logging

    overrides = {k: getattr(args, k, None) for k in (
        "model", "checkpoint", "device", "dtype", "click_dtype", "threads", "label_studio_url", "label_studio_api_key",
        "basic_auth_user", "basic_auth_pass", "cache_size", "cache_dir", "cache_dir_mb", "output", "model_version",
        "log_level", "text_model")}
    settings = Settings.from_env(**overrides)
    port = args.port if args.port is not None else env_number("SAMKIT_LS_PORT", int, 9090)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    uvicorn.run(app, host=args.host, port=port, log_level=settings.log_level.lower(),
                timeout_keep_alive=30, timeout_graceful_shutdown=5)
    return 0


def _precompute(args) -> int:
    import json
    import time
    import urllib.error
    import urllib.request

    def call(method: str, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(args.backend.rstrip("/") + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
        if args.basic_auth_user:
            import base64

            token = base64.b64encode(f"{args.basic_auth_user}:{args.basic_auth_pass or ''}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")
            try:
                detail = json.loads(detail).get("error", detail)
            except ValueError:
                pass
            raise SystemExit(f"samkit: error: backend answered HTTP {e.code}: {detail}") from None
        except urllib.error.URLError as e:
            raise SystemExit(f"samkit: error: cannot reach the backend at {args.backend}: {e.reason}") from None

    job = call("POST", "/precompute", {"project": args.project, "predictions": args.predictions})
    print(f"precompute job {job['id']} started for project {args.project}")
    if not args.wait:
        return 0
    def progress() -> str:
        extra = f", {job['predicted']} predictions stored, {job['skipped']} skipped" if job["predictions"] else ""
        return f"{job['done']}/{job['total']} images, {job['computed']} computed{extra}"

    # On a terminal one line redrawn in place; in a log file or CI output (no terminal) a plain
    # line now and then: each 10% of the tasks, or every 30 s while tasks still finish.
    tty = sys.stdout.isatty()
    shown, shown_at, line = -1, 0.0, ""
    while job["state"] in ("queued", "running"):
        time.sleep(1.0)
        job = call("GET", f"/precompute/{job['id']}")
        if tty:
            print(f"\r{progress()}", end="", flush=True)
        elif job["done"] != shown and job["state"] == "running" and (
                job["done"] - shown >= max(1, job["total"] // 10) or time.monotonic() - shown_at >= 30):
            line = progress()
            print(line, flush=True)
            shown, shown_at = job["done"], time.monotonic()
    if tty:
        print(f"\r{progress()}")
    elif progress() != line:
        print(progress())
    for err in job["errors"]:
        print(f"  {err}", file=sys.stderr)
    if job["state"] != "done":
        print(f"samkit: error: precompute failed: {job['error']}", file=sys.stderr)
        return 2
    return 0 if not job["errors"] else 1


def _config(args) -> int:
    from pathlib import Path

    print((Path(__file__).parent / "label_config.xml").read_text(), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m samkit.label_studio ...` (the same commands without the `label-studio` word)."""
    parser = argparse.ArgumentParser(prog="samkit")
    sub = parser.add_subparsers(dest="command")
    add_commands(sub)
    args = parser.parse_args(["label-studio", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except Exception as e:
        try:
            from samkit import SamkitError
        except ImportError:  # pragma: no cover
            raise e
        if isinstance(e, SamkitError):
            print(f"samkit: error: {e}", file=sys.stderr)
            return 2
        raise
