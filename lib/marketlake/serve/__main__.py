"""python -m marketlake.serve [--config conf/X.yaml] [--lake PATH] [--host H] [--port P] [--poll-seconds S]

Loads every table it serves once, then serves HTTP while a poller swaps in new table versions. Exit 2
(one line on stderr) for bad arguments, configuration or a missing local lake root."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from marketlake.config import Config, ServeConfig, load_config, with_overrides
from marketlake.errors import UsageError
from marketlake.serve.api import Api
from marketlake.serve.snapshot import Poller, Store

log = logging.getLogger("marketlake.serve")


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m marketlake.serve",
        description="Serve recommendations, similar items and segments over HTTP from the gold tables.",
    )
    parser.add_argument("--config", help="YAML merged over the embedded default (conf/local.yaml)")
    parser.add_argument("--lake", help="the lake root (default: lake.root, or MARKETLAKE_LAKE)")
    parser.add_argument("--host", help="address to listen on (serve.host)")
    parser.add_argument("--port", type=int, help="port to listen on (serve.port)")
    parser.add_argument(
        "--poll-seconds", type=float, help="how often the Delta logs are checked (serve.poll_seconds)"
    )
    return parser.parse_args(argv)


def settings(args: argparse.Namespace) -> tuple[Config, ServeConfig]:
    config = load_config(args.config)
    if args.lake:
        config = config.with_lake_root(args.lake)
    serve = with_overrides(
        config.serve, {"host": args.host, "port": args.port, "poll_seconds": args.poll_seconds}
    )
    root = config.lake.root
    if "://" not in root and not root.startswith("file:") and not os.path.isdir(root):
        raise UsageError(f"lake root {os.path.abspath(root)} does not exist")
    return config, serve


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    try:
        config, serve = settings(args)
    except UsageError as exc:
        print(f"marketlake serve: {exc}", file=sys.stderr)
        return exc.exit_code
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    import uvicorn

    from marketlake.serve.app import create_app

    root = config.lake.root if "://" in config.lake.root else os.path.abspath(config.lake.root)
    store = Store(root, config.lake.storage_options, serve.popular_items)
    store.refresh()
    poller = Poller(store, serve.poll_seconds).start()
    api_key = os.environ.get(serve.api_key_env) or None
    log.info(
        "serve: lake %s on http://%s:%d, polling every %g s, API key %s",
        root,
        serve.host,
        serve.port,
        serve.poll_seconds,
        f"from {serve.api_key_env}" if api_key else f"off ({serve.api_key_env} is not set)",
    )
    try:
        uvicorn.run(
            create_app(Api(store, serve), api_key),
            host=serve.host,
            port=serve.port,
            access_log=False,
            log_level="warning",
        )
    finally:
        poller.stop(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
