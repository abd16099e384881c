"""The serving state: which versions of which models a server serves, kept beside the store.

`$BENTOML_HOME/modelserve/serving.json` holds {"generation": n, "models": {name: state or null}}
(null: unloaded on purpose). A model of the store that the file does not name is served at its
latest version. The file survives restarts, so a restart never silently reverts to `:latest`.

BentoML runs every worker as a process of its own with no reload API, so workers converge
through this file: an admin request (to any worker) writes a new generation under a lock;
every worker's watcher thread sees it within WATCH_SECONDS, applies it, and writes an
acknowledgement `acks/<host>-<pid>.json`; the admin request answers once every live worker
of this host has acknowledged the generation.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable

WATCH_SECONDS = 0.1


def folder() -> str:
    home = os.environ.get("BENTOML_HOME", os.path.expanduser("~/bentoml"))
    path = os.path.join(home, "modelserve")
    os.makedirs(os.path.join(path, "acks"), exist_ok=True)
    return path


def state_path() -> str:
    return os.path.join(folder(), "serving.json")


def read() -> tuple[int, dict]:
    """(generation, {name: state dict or None}); (0, {}) before the first update."""
    try:
        with open(state_path(), encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return 0, {}
    return int(data.get("generation", 0)), dict(data.get("models", {}))


def write(generation: int, models: dict) -> None:
    """Atomically: a reader sees the old file or the new one, never a part."""
    directory = folder()
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".serving-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"generation": generation, "models": models}, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, state_path())


@contextlib.contextmanager
def locked():
    """One update at a time across the workers (and servers) sharing this BENTOML_HOME."""
    with open(os.path.join(folder(), "serving.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _ack_name(pid: int | None = None) -> str:
    return f"{socket.gethostname()}-{pid or os.getpid()}.json"


def acknowledge(generation: int, error: str | None) -> None:
    path = os.path.join(folder(), "acks", _ack_name())
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump({"generation": generation, "error": error}, f)
    os.replace(temporary, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acknowledgements() -> dict[int, dict]:
    """{pid: {"generation", "error"}} of this host's live workers."""
    prefix, found = socket.gethostname() + "-", {}
    acks = os.path.join(folder(), "acks")
    for name in os.listdir(acks):
        if not (name.startswith(prefix) and name.endswith(".json")):
            continue
        pid = int(name[len(prefix) : -len(".json")]) if name[len(prefix) : -len(".json")].isdigit() else 0
        if not pid or not _alive(pid):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(acks, name))
            continue
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(acks, name), encoding="utf-8") as f:
                found[pid] = json.load(f)
    return found


def wait_for_workers(generation: int, workers: int, timeout_s: float) -> tuple[bool, list[str]]:
    """(every worker serves `generation`, the errors workers reported for it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        acks = acknowledgements()
        current = [a for a in acks.values() if a.get("generation", 0) >= generation]
        errors = [f"worker {pid}: {a['error']}" for pid, a in acks.items() if a.get("generation") == generation and a.get("error")]
        if errors:
            return False, errors
        if len(current) >= workers:
            return True, []
        if time.monotonic() > deadline:
            return False, [f"{len(current)} of {workers} workers applied it within {timeout_s:g} s"]
        time.sleep(WATCH_SECONDS / 2)


class Watcher(threading.Thread):
    """Polls the state file; calls `apply(generation, models)` on every change, then acknowledges."""

    def __init__(self, apply: Callable[[int, dict], None]):
        super().__init__(name="modelserve-state-watcher", daemon=True)
        self.apply = apply
        self.seen: tuple | None = None
        self.generation = 0

    def stamp(self) -> tuple | None:
        try:
            info = os.stat(state_path())
        except FileNotFoundError:
            return None
        return info.st_mtime_ns, info.st_size, info.st_ino

    def check_now(self) -> None:
        """The first apply, in the caller's thread: a failure raises (the worker must not start)."""
        self.seen = self.stamp()
        self.generation, models = read()
        self.apply(self.generation, models)
        acknowledge(self.generation, None)

    def check(self) -> None:
        stamp = self.stamp()
        if stamp == self.seen:
            return
        self.seen = stamp
        generation, models = read()
        if generation == self.generation and generation:
            return
        try:
            self.apply(generation, models)
        except Exception as e:  # reported to the admin request that asked for it
            acknowledge(generation, f"{type(e).__name__}: {e}")
            return
        self.generation = generation
        acknowledge(generation, None)

    def run(self) -> None:
        while True:
            time.sleep(WATCH_SECONDS)
            try:
                self.check()
            except Exception:  # a half-written or unreadable file: try again next time
                self.seen = None
