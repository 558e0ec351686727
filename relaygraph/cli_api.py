"""``relaygraph api`` (the HTTP API under uvicorn) and ``relaygraph api-key`` (a new key)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import signal
import sys
from collections.abc import Iterator
from typing import Any

import orjson

from relaygraph.cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    redact_url,
    require_url,
    settings_from,
    setup_logging,
)
from worker.loop import run_loop

__all__ = ["add_api_commands", "is_loopback"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def add_api_commands(sub: Any, redis_opts: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "api",
        parents=[redis_opts],
        help="serve the HTTP API (docs/api.md)",
        description="Serve the HTTP API until stopped. Without keys it listens only on "
        "loopback, unless --insecure.",
    )
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on ({DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port ({DEFAULT_PORT})")
    p.add_argument(
        "--keys", metavar="FILE", help="API keys document (RELAYGRAPH_API_KEYS_FILE; docs/api.md)"
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="serve without keys on a non-loopback address (everyone is an admin)",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        metavar="ORIGIN",
        help="allow browser calls from ORIGIN (repeatable; RELAYGRAPH_API_CORS_ORIGINS)",
    )
    p.add_argument(
        "--max-body", type=int, metavar="BYTES", help="largest request body (default 1 MiB)"
    )
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    p.add_argument("--log-format", choices=["text", "json"], help="text or json log lines")
    p.set_defaults(func=cmd_api)

    p = sub.add_parser(
        "api-key",
        help="make a new API key and print its keys-file entry",
        description="Print a new random key (shown once: give it to its user) and the entry "
        "to add to the keys file, which holds only the key's SHA-256 digest.",
    )
    p.add_argument("--name", required=True, help="the key's name (the actor in histories)")
    p.add_argument(
        "--role",
        action="append",
        required=True,
        choices=["viewer", "submitter", "approver", "admin"],
        help="a role of the key (repeatable)",
    )
    p.set_defaults(func=cmd_api_key)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from relaygraph.api import ApiKeys, ApiSettings, KeysError, create_app

    settings: ApiSettings = settings_from(
        args,
        ApiSettings,
        api_keys_file=args.keys,
        api_insecure=args.insecure,
        api_cors_origins=args.cors_origin,
        api_max_body_bytes=args.max_body,
        log_format=args.log_format,
    )
    url = require_url(settings, "api")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port}: not a port (1-65535)")
    try:
        keys = ApiKeys.load(settings.api_keys, settings.api_keys_file)
    except KeysError as e:
        raise UsageError(str(e)) from e
    if not keys.enabled and not is_loopback(args.host) and not settings.api_insecure:
        raise UsageError(
            f"no API keys: refusing to listen on {args.host} (not loopback); give --keys FILE "
            "or RELAYGRAPH_API_KEYS, or pass --insecure to let anyone in"
        )
    setup_logging(args.log_level, settings.log_format)
    run_loop(_refuse_cluster(url))  # said plainly here, not in uvicorn's start-up traceback
    app = create_app(settings, keys)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_config=None,  # our logging set-up, not uvicorn's
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    auth = f"{len(keys.names)} key(s)" if keys.enabled else "no keys: everyone is admin"
    banner = (
        f"relaygraph api: listening on http://{args.host}:{args.port} "
        f"({auth}; {redact_url(url)}, prefix {settings.prefix})"
    )
    server = _server_class()(config, banner)
    with contextlib.suppress(SystemExit):  # uvicorn exits when it cannot listen (logged why)
        run_loop(server.serve())
    if not server.started:
        print(f"relaygraph: error: could not serve on {args.host}:{args.port}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


async def _refuse_cluster(url: str) -> None:
    from dispatcher.connect import connect, refuse_cluster

    redis = connect(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        await refuse_cluster(redis)
    finally:
        await redis.aclose()


def _server_class() -> type[Any]:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, stopped by SIGTERM or Ctrl-C with exit status 0: uvicorn
        re-raises the signal after its graceful shutdown, which would kill the process
        with it; a second signal forces the exit. Prints ``banner`` once it listens (what
        ``relaygraph up --api`` and the tests wait for)."""

        def __init__(self, config: uvicorn.Config, banner: str) -> None:
            super().__init__(config)
            self.banner = banner

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                print(self.banner, flush=True)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            loop = asyncio.get_running_loop()

            def stop() -> None:
                self.force_exit = self.should_exit
                self.should_exit = True

            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop)
            try:
                yield
            finally:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(signum)

    return Server


def cmd_api_key(args: argparse.Namespace) -> int:
    from relaygraph.api import KeysError, key_entry, new_key

    key = new_key()
    try:
        entry = key_entry(args.name, args.role, key)
    except KeysError as e:
        raise UsageError(str(e)) from e
    print(f"key: {key}")
    print('keys-file entry (add it to the "keys" list):')
    print(orjson.dumps(entry).decode())
    return EXIT_OK
