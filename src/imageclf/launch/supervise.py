"""A small process supervisor: start children, notice when one dies, restart it, stop them all cleanly.

Each child gets its own session so a terminal's Ctrl-C reaches only the supervisor,
which then stops the children in reverse start order (SIGTERM, then SIGKILL after a
grace period) so none is left orphaned. On Linux a child is also sent SIGTERM when the
supervisor itself dies (PR_SET_PDEATHSIG), so a supervisor killed with `kill -9` and
started again does not run a second set beside the first.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType


class Stop(Exception):
    """Raised in the main thread by SIGINT/SIGTERM."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def install_stop_handlers() -> None:
    """Turn SIGINT and SIGTERM into `Stop` so `finally:` blocks can clean up."""
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)


def log(part: str, message: str) -> None:
    print(f"[{part:>7}] {message}", file=sys.stderr, flush=True)


def returning_malloc(env: Mapping[str, str]) -> dict[str, str]:
    """`env` plus glibc settings that give freed image memory back to the OS (unless the caller set them).

    glibc raises its mmap threshold after freeing a large block, so later 16 MB Pillow blocks
    come from per-thread heaps that are never trimmed: an API process kept 6.3 GB after decoding
    large PNGs (measured). A fixed 1 MB threshold maps large blocks and unmaps them when freed,
    and two arenas bound what 32 request threads keep for small allocations.
    """
    return {"MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_ARENA_MAX": "2", **env}


_PR_SET_PDEATHSIG = 1


def _term_when_parent_dies() -> None:
    """In the child, before exec: SIGTERM when the supervisor's thread that started it is gone."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the orphan lives on, as without it
        pass


class ProcessGroup:
    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
              position: int | None = None, user: str | None = None) -> subprocess.Popen:
        """Start a child (as `user`, when given); `position` puts it back where a restarted one was, so the stop
        order stays the start order (Redis last)."""
        proc = subprocess.Popen(list(argv), env=dict(env) if env is not None else None, start_new_session=True,
                                preexec_fn=_term_when_parent_dies if sys.platform == "linux" else None, user=user)
        self.children.insert(len(self.children) if position is None else position, (name, proc))
        return proc

    def exited(self) -> list[tuple[str, subprocess.Popen]]:
        """Children that have exited (their return code is set)."""
        return [(name, proc) for name, proc in self.children if proc.poll() is not None]

    def stop_one(self, name: str, proc: subprocess.Popen, grace_s: float = 30.0) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                log(name, f"did not stop within {grace_s:g} s; killing it")
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass
        # Reap anything the child left in its process group.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.children = [(n, p) for n, p in self.children if p is not proc]

    def stop_all(self, grace_s: float = 30.0) -> None:
        """Stop every child, last started first; further Ctrl-C presses are ignored meanwhile."""
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            for name, proc in reversed(list(self.children)):
                self.stop_one(name, proc, grace_s)
        finally:
            signal.signal(signal.SIGINT, previous[0])
            signal.signal(signal.SIGTERM, previous[1])


def wait_until(predicate: Callable[[], object], timeout_s: float, interval_s: float = 0.2) -> bool:
    """Poll `predicate()` until it is true or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return False


class GaveUp(Exception):
    """A child kept dying: the supervisor stops, with this reason."""


@dataclass
class RestartPolicy:
    """Restart a dead child after a backoff that doubles with each death in the last `window_s` (from `first_s` up
    to `max_s`); give up when it died `max_deaths` times within `window_s`, as systemd's StartLimitBurst does."""

    max_deaths: int = 5
    window_s: float = 60.0
    first_s: float = 1.0
    max_s: float = 30.0
    deaths: dict[str, deque[float]] = field(default_factory=dict)

    def backoff_after_death(self, name: str, now: float | None = None) -> float:
        """Seconds to wait before starting `name` again; raises GaveUp when it dies too often."""
        now = time.monotonic() if now is None else now
        recent = self.deaths.setdefault(name, deque())
        recent.append(now)
        while recent and recent[0] < now - self.window_s:
            recent.popleft()
        if len(recent) >= self.max_deaths:
            raise GaveUp(f"{name} died {len(recent)} times within {self.window_s:g} s")
        return min(self.max_s, self.first_s * 2 ** (len(recent) - 1))


def exit_reason(code: int | None) -> str:
    """"exited with code 3", "killed by SIGKILL"."""
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"
