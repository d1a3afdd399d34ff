"""What a step says while it runs: a plain line for a person at a terminal, one JSON object per line when
stderr is not a terminal (a Job's pod log, a CI log), so a log pipeline can filter by round, step and shard
without parsing prose.

The round, step and shard are bound once (`bind`) by whoever knows them (the command line, the round
workspace, the embedded round runner) and ride along on every event through structlog's contextvars, so a
step module only says what happened: `log("task done", task=..., solved=...)`. Lines go to stdout, where
the steps always printed them; the choice of format follows stderr, which stays a terminal when a person
pipes a command's stdout somewhere.
"""

from __future__ import annotations

import sys
from typing import Any

import structlog
from structlog.typing import EventDict, WrappedLogger

# Which fields every event carries, and in which order a JSON line lists them first.
CONTEXT = ("round", "step", "shard")


def bind(**context: Any) -> None:
    """Attach round/step/shard (those given, None values dropped) to every later event of this context."""
    structlog.contextvars.bind_contextvars(**{k: v for k, v in context.items() if v is not None})


# `with scoped(shard=i): ...`: context for one block (a shard of an embedded round), restored after it.
scoped = structlog.contextvars.bound_contextvars


def json_lines() -> bool:
    """JSON when stderr is not a terminal; a closed or replaced stream without isatty counts as not one."""
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return not (isatty and isatty())
    except ValueError:  # closed stream
        return True


def _human(_: WrappedLogger, __: str, event: dict[str, Any]) -> str:
    """The message as the step words it; without one, `step: event key=value ...`."""
    if "message" in event:
        return str(event["message"])
    fields = " ".join(f"{k}={v}" for k, v in event.items() if k not in (*CONTEXT, "event", "level"))
    return f"{event.get('step', 'agentq')}: {event['event']}" + (f" {fields}" if fields else "")


def _context_first(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    ordered = {k: event.pop(k) for k in (*CONTEXT, "event") if k in event}
    return {**ordered, **event}


def log(event: str, *, level: str = "info", **fields: Any) -> None:
    """One event: `event` names what happened (stable, for filters); `message` (optional) is the sentence a
    person reads at a terminal; other fields are its data."""
    processors: list[Any] = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level]
    if json_lines():
        processors += [structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"), _context_first,
                       structlog.processors.JSONRenderer(default=str)]
    else:
        processors.append(_human)
    logger = structlog.wrap_logger(structlog.PrintLogger(sys.stdout), processors=processors)
    getattr(logger, level)(event, **fields)
    sys.stdout.flush()
