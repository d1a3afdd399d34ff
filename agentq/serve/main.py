"""`agentq serve`: open the store, configure JSON logs, and run the dashboard under uvicorn.

The store is named the way a round file names it (a path, or s3://bucket/prefix with the endpoint and
credentials from the environment as the steps take them), so a person points the service at exactly the
store their rounds write to. The token comes from a file (a mounted Secret) or AGENTQ_SERVE_TOKEN, never
from the command line, where `ps` would show it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import structlog

from agentq.config import ConfigError, S3Spec, StoreSpec
from agentq.store import Store, open_store


def store_spec(value: str) -> StoreSpec:
    """`path/to/store` or `s3://bucket[/prefix]` (endpoint from AGENTQ_S3_ENDPOINT, as the step Jobs have it)."""
    if value.startswith("s3://"):
        bucket, _, prefix = value.removeprefix("s3://").partition("/")
        if not bucket:
            raise ConfigError(f"--store {value!r}: expected s3://bucket[/prefix]")
        return StoreSpec(s3=S3Spec(bucket=bucket, prefix=prefix, endpoint=os.environ.get("AGENTQ_S3_ENDPOINT")))
    if not Path(value).is_dir():
        raise ConfigError(f"--store {value!r}: no such directory (a round's store.path, or s3://bucket/prefix)")
    return StoreSpec(path=str(Path(value).resolve()))


def open_named_store(value: str) -> Store:
    return open_store(store_spec(value))


def read_token(token_file: str | None) -> str | None:
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as err:
            raise ConfigError(f"--token-file {token_file}: {err.strerror}") from None
        if not token:
            raise ConfigError(f"--token-file {token_file}: the file is empty")
        return token
    return os.environ.get("AGENTQ_SERVE_TOKEN") or None


def configure_logging(level: str = "info") -> None:
    """One JSON object per line on stdout (what a log collector indexes); uvicorn's own lines go through the
    same renderer so nothing prints in a second format."""
    processors = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                  structlog.processors.TimeStamper(fmt="iso", utc=True)]
    structlog.configure(processors=[*processors, structlog.processors.JSONRenderer()],
                        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
                        logger_factory=structlog.PrintLoggerFactory(sys.stdout), cache_logger_on_first_use=False)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, structlog.processors.JSONRenderer()],
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *processors]))
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False


def serve(app: object, args: argparse.Namespace) -> int:
    import uvicorn

    log = structlog.get_logger("agentq.serve")
    log.info("listening", url=f"http://{args.host}:{args.port}/", store=args.store)
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False, log_level=args.log_level)
    return 0


def main(args: argparse.Namespace) -> int:
    from agentq.serve.app import create_app
    from agentq.serve.reader import StoreReader

    token = read_token(args.token_file)  # a bad flag fails in one line before anything is configured
    reader = StoreReader(open_named_store(args.store))
    configure_logging(args.log_level)
    return serve(create_app(reader, token=token, poll_interval=args.poll_interval,
                            allowed_hosts=args.allowed_host), args)
