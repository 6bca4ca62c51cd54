"""`dinov3kit serve INDEX`: the web app on a local port (registered by `add_serve_command`)."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from pathlib import Path

from ..tools.devices import DTYPE_HELP
from ..tools.runtime import MODEL_ENV

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def add_serve_command(commands) -> argparse.ArgumentParser:
    """Add `serve` to the subcommands of the `dinov3kit` parser."""
    help = "a local web app: search, duplicates, map and dense features of an index"
    serve = commands.add_parser("serve", help=help, description=help + " (needs the web extra: pip install 'dinov3kit[web]')")
    serve.set_defaults(run=run_serve)
    serve.add_argument("index", type=Path, metavar="INDEX", help="an index made by `dinov3kit embed`")
    serve.add_argument("--model", help=f"the checkpoint that made the index (default: the one it records; ${MODEL_ENV} is not used)")
    serve.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    serve.add_argument("--dtype", default="auto", help=DTYPE_HELP)
    serve.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}, this machine only)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    serve.add_argument("--feature", choices=("cls", "mean_patch"), default="cls", help="which embedding to compare (default cls)")
    serve.add_argument("--max-upload-mb", type=float, default=20, help="largest accepted upload in MB (default 20)")
    serve.add_argument("--thumbnail-dir", type=Path, help="thumbnail cache folder (default ~/.cache/dinov3kit/thumbnails)")
    serve.add_argument("--thumbnail-cache-mb", type=float, default=512, help="size bound of the thumbnail cache in MB (default 512)")
    serve.add_argument("--allow-model-mismatch", action="store_true", help="embed uploads with another model than the index's")
    serve.add_argument("--no-model", action="store_true", help="do not load the model: browse and search by row only")
    serve.add_argument("--threads", type=int, help="torch threads of this server (default: torch's; 1 keeps latency steady on a busy machine)")
    return serve


def is_loopback(host: str) -> bool:
    """Whether every address `host` stands for is on this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False
        return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a ValueError saying what to change."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be between 0 and 65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as error:
        raise ValueError(f"cannot listen on {host!r} ({error}); pass another --host") from error
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as error:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port} ({error.strerror or error}); pass another --port (0 picks a free one)") from error
    return sock


def page_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if ipaddress.ip_address(host).is_unspecified:
        host = "127.0.0.1" if sock.family == socket.AF_INET else "::1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def run_serve(args) -> int:
    from . import require_web

    require_web()
    import uvicorn

    from ..tools.runtime import ModelUnavailableError
    from .app import create_app
    from .explorer import Explorer
    from .guards import LOOPBACK_NAMES
    from .thumbnails import ThumbnailCache

    if args.max_upload_mb <= 0:
        raise ValueError(f"--max-upload-mb must be more than 0, got {args.max_upload_mb:g}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    loopback = is_loopback(args.host)
    if not loopback:
        print(
            f"dinov3kit serve: warning: listening on {args.host}, which other machines can reach: anyone who can connect "
            "sees every image of the index and can upload images (there is no login). Use --host 127.0.0.1 to keep it local.",
            file=sys.stderr,
        )
    cache = ThumbnailCache(args.thumbnail_dir, max_bytes=int(args.thumbnail_cache_mb * 2**20))
    explorer = Explorer(args.index, args.model, feature=args.feature, device=args.device, dtype=args.dtype,
                        thumbnails=cache, load_model=False, allow_model_mismatch=args.allow_model_mismatch)
    if not args.no_model:
        try:
            explorer.load_model()
        except ModelUnavailableError as error:
            if args.model:
                raise
            print(f"dinov3kit serve: warning: serving without a model (uploads and dense views are off):\n{error}", file=sys.stderr)
    app = create_app(explorer, max_upload_bytes=int(args.max_upload_mb * 2**20),
                     allowed_hosts=(*LOOPBACK_NAMES, args.host.strip("[]")) if loopback else None)
    sock = listen(args.host, args.port)
    print(f"dinov3kit serve: {explorer.rows} rows of {explorer.index.path}, model {explorer.model_name}"
          f"{'' if explorer.has_model else ' (not loaded)'}")
    print(f"dinov3kit serve: open {page_url(sock)}  (API: {page_url(sock)}docs; Ctrl+C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    server.run(sockets=[sock])
    return 0
