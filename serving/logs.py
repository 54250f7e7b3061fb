"""Structured logs: one JSON object per line on stderr, no progress output.

    log_event(logger, "bundle loaded", version="v3", clusters=2)
    → {"ts": "2025-01-01T00:00:00.123Z", "level": "info", "logger": "serving.server",
       "msg": "bundle loaded", "version": "v3", "clusters": 2}
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_FIELDS = "fields"  # LogRecord attribute carrying the structured fields


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: ts, level, logger, msg, then its fields."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        out: dict[str, Any] = {"ts": ts, "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        out.update(getattr(record, _FIELDS, None) or {})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(level: str | int = "INFO", stream=None) -> None:
    """Routes every logger (and `warnings`) through one JSON-lines handler. Call it after
    importing torch, whose loggers it takes over.

    Args:
        level: root log level name or number.
        stream: where lines go; stderr by default.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # Libraries that install their own handlers (torch does, with propagate=False) would
    # print plain-text lines into the JSON stream: send their records through ours.
    for logger in list(logging.root.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and logger.handlers:
            logger.handlers.clear()
            logger.propagate = True
    logging.captureWarnings(True)  # warnings.warn → the "py.warnings" logger → JSON


def log_event(logger: logging.Logger, msg: str, level: int = logging.INFO, exc_info: bool = False, **fields: Any) -> None:
    """Logs `msg` with structured `fields` (cheap no-op when the level is disabled)."""
    if logger.isEnabledFor(level):
        logger.log(level, msg, exc_info=exc_info, extra={_FIELDS: fields})
