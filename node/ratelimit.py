"""Rate-limited logging for messages that outside input can trigger at will."""

from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """Log at most ``per_window`` messages per window and count the rest.

    A hostile client can send rejected input as fast as the network allows;
    this keeps one log line per rejection from filling the disk. When a
    window with suppressed messages ends, the next message is preceded by a
    line that counts them.
    """

    def __init__(self, logger: logging.Logger, per_window: int = 20, window_seconds: float = 60.0) -> None:
        self.logger = logger
        self.per_window = per_window
        self.window_seconds = window_seconds
        self._window_start = time.monotonic()
        self._logged = 0
        self._suppressed = 0

    def log(self, level: int, message: str, *args: Any) -> None:
        """Log ``message`` unless this window's budget is spent."""
        now = time.monotonic()
        if now - self._window_start >= self.window_seconds:
            if self._suppressed:
                self.logger.log(level, "%d more similar messages were not logged in the last %.0f s", self._suppressed, self.window_seconds)
            self._window_start = now
            self._logged = 0
            self._suppressed = 0
        if self._logged < self.per_window:
            self._logged += 1
            self.logger.log(level, message, *args)
        else:
            self._suppressed += 1
