"""The registry: every served model by name, its loaded versions, and how requests reach them.

A model's `ModelState` says which version answers (default), which takes a share of the
traffic (canary), which runs a copy of every request after the answer is sent (shadow), and
which stays loaded for a rollback (previous) or for pinned requests (loaded). `Registry.apply`
loads what a new state needs, swaps the routing table in one assignment, and retires versions
no state names any more once their queued requests have run. `Registry.route` picks the
version for one request: the `X-Model-Version` header pins one; otherwise the canary share,
sticky per `X-Request-Key`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from starlette.background import BackgroundTask

from service import metrics, state
from service.errors import ClientError
from service.runtime import ModelLoadError, load_stored, stored_models
from service.tasks import LABELLED_KINDS, ServedModel, TensorView, retire, serve

VERSION_HEADER = "x-model-version"
# Shadow copies running or queued in this worker; past the limit new copies are skipped (counted).
MAX_SHADOW_PENDING = 64
SHADOW_TASKS: set = set()
REQUEST_KEY_HEADER = "x-request-key"
STATE_KEYS = ("default", "canary", "shadow", "loaded")


@dataclass(frozen=True)
class ModelState:
    default: str
    previous: str | None = None
    canary: tuple[str, float] | None = None  # (version, percent of requests)
    shadow: str | None = None
    loaded: tuple[str, ...] = ()

    def versions(self) -> list[str]:
        named = [self.default, self.canary[0] if self.canary else None, self.shadow, self.previous, *self.loaded]
        return list(dict.fromkeys(v for v in named if v))

    def role(self, version: str) -> str:
        if version == self.default:
            return "default"
        if self.canary and version == self.canary[0]:
            return "canary"
        if version == self.shadow:
            return "shadow"
        return "previous" if version == self.previous else "loaded"

    def share(self, version: str) -> float:
        percent = self.canary[1] if self.canary else 0.0
        if self.canary and version == self.canary[0]:
            return percent / 100
        return 1 - percent / 100 if version == self.default else 0.0

    def to_dict(self) -> dict:
        return {
            "default": self.default,
            "canary": {"version": self.canary[0], "percent": self.canary[1]} if self.canary else None,
            "shadow": self.shadow,
            "loaded": list(self.loaded),
            "previous": self.previous,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ModelState:
        canary = d.get("canary")
        return cls(
            default=d["default"],
            previous=d.get("previous"),
            canary=(canary["version"], float(canary["percent"])) if canary else None,
            shadow=d.get("shadow"),
            loaded=tuple(d.get("loaded") or ()),
        )

    @classmethod
    def from_request(cls, body, current: ModelState | None) -> ModelState:
        """A PUT body -> the new state (400 naming the field for a malformed one). A new default
        keeps the old one loaded as `previous`, the rollback target."""
        if not isinstance(body, dict):
            raise ClientError("body", "must be a JSON object such as {\"default\": \"<version>\"}", "invalid_input")
        unknown = sorted(set(body) - set(STATE_KEYS))
        if unknown:
            raise ClientError(unknown[0], f"is not a field; the fields are {list(STATE_KEYS)}", "unknown_field")
        default = body.get("default")
        if not isinstance(default, str) or not default:
            raise ClientError("default", "must name a version", "invalid_input")
        canary = body.get("canary")
        if canary is not None:
            if not isinstance(canary, dict) or set(canary) != {"version", "percent"} or not isinstance(canary["version"], str):
                raise ClientError("canary", 'must be {"version": "<version>", "percent": <0 to 100>}', "invalid_input")
            percent = canary["percent"]
            if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 <= percent <= 100:
                raise ClientError("canary.percent", f"must be a number from 0 to 100, got {percent!r}", "percent_out_of_range")
            if canary["version"] == default:
                raise ClientError("canary.version", "is the default already", "invalid_input")
            canary = (canary["version"], float(percent))
        shadow = body.get("shadow")
        if shadow is not None and (not isinstance(shadow, str) or shadow == default):
            raise ClientError("shadow", "must name a version other than the default", "invalid_input")
        loaded = body.get("loaded") or []
        if not isinstance(loaded, list) or not all(isinstance(v, str) for v in loaded):
            raise ClientError("loaded", "must be a list of versions", "invalid_input")
        previous = None
        if current is not None:
            previous = current.default if current.default != default else current.previous
        return cls(default, previous if previous != default else None, canary, shadow, tuple(loaded))


@dataclass
class Route:
    """The versions one request runs on: `call` runs a task method on the primary and, after
    the answer is sent (the response's background task), on the shadow, comparing outputs."""

    model: str
    primary: ServedModel
    shadow: ServedModel | None = None
    _shadow_call: tuple | None = field(default=None, repr=False)

    async def call(self, method: str, *args) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        try:
            outputs = await getattr(self.primary, method)(*args)
        finally:
            self.primary.request_seconds.observe(time.perf_counter() - started)
        if self.shadow is not None:
            self._shadow_call = (method, args, outputs)
        return outputs

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Model-Version": self.primary.version}

    def answer(self, response):
        """The response with the version header, and the shadow run to follow it: started once
        the answer is sent, and detached, so the request's slot in the guard is free at once."""
        response.headers.update(self.headers)
        if self._shadow_call is not None:
            response.background = BackgroundTask(self._start_shadow, *self._shadow_call)
            self._shadow_call = None
        return response

    async def _start_shadow(self, method: str, args: tuple, expected: dict) -> None:
        labels = {"model": self.model, "primary": self.primary.version, "shadow": self.shadow.version}
        if len(SHADOW_TASKS) >= MAX_SHADOW_PENDING:  # the shadow falls behind: drop copies, never the answers
            metrics.SHADOW_RUNS.labels(**labels, result="skipped").inc()
            return
        task = asyncio.ensure_future(self._run_shadow(method, args, expected))
        SHADOW_TASKS.add(task)
        task.add_done_callback(SHADOW_TASKS.discard)

    async def _run_shadow(self, method: str, args: tuple, expected: dict) -> None:
        shadow = self.shadow
        labels = {"model": self.model, "primary": self.primary.version, "shadow": shadow.version}
        try:
            got = await getattr(shadow, method)(*args)
        except Exception:
            metrics.SHADOW_RUNS.labels(**labels, result="error").inc()
            return
        agree = True
        for name, want in expected.items():
            have = got.get(name)
            if have is None or have.shape != want.shape:
                agree = False
            elif self.primary.output_kind(name) in LABELLED_KINDS:
                agree &= bool(np.array_equal(have.argmax(axis=1), want.argmax(axis=1)))
            else:
                metrics.SHADOW_DIFF.labels(**labels).observe(float(np.max(np.abs(have - want))) if want.size else 0.0)
        metrics.SHADOW_RUNS.labels(**labels, result="agree" if agree else "disagree").inc()


@dataclass(frozen=True)
class Entry:
    """One served model: its state and its loaded versions."""

    name: str
    state: ModelState
    versions: dict[str, ServedModel]

    @property
    def default(self) -> ServedModel:
        return self.versions[self.state.default]

    def route(self, headers) -> Route:
        pinned = headers.get(VERSION_HEADER)
        if pinned:
            if pinned not in self.versions:
                raise ClientError(
                    "X-Model-Version", f"model {self.name} has no loaded version {pinned!r}; loaded: {', '.join(self.versions)}", "unknown_version", 404
                )
            return Route(self.name, self.versions[pinned])
        primary = self.default
        if self.state.canary:
            version, percent = self.state.canary
            key = headers.get(REQUEST_KEY_HEADER)
            bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 10_000 / 100 if key else random.random() * 100
            if bucket < percent:
                primary = self.versions[version]
        shadow = self.versions[self.state.shadow] if self.state.shadow else None
        return Route(self.name, primary, shadow if shadow is not primary else None)


class Registry:
    def __init__(self, threads: int):
        self.threads = threads
        self.entries: dict[str, Entry] = {}
        self.views: dict[str, tuple[str, str]] = {}  # tensor view name -> (model, view)
        self._loaded: dict[tuple[str, str], ServedModel] = {}
        self._lock = threading.Lock()

    def load(self, name: str, version: str) -> ServedModel:
        """A loaded version (loading, checking and warming it up if needed). Any thread."""
        with self._lock:
            served = self._loaded.get((name, version))
        if served is None:
            served = serve(load_stored(name, version, self.threads))
            with self._lock:
                served = self._loaded.setdefault((name, version), served)
            publish(served, 1)
        return served

    def apply(self, file_states: dict) -> None:
        """Serve what the state file says (every other stored model at its latest version)."""
        states = desired_states(file_states)
        entries = {name: Entry(name, state, {v: self.load(name, v) for v in state.versions()}) for name, state in states.items()}
        views = {view: (name, view) for name, entry in entries.items() for view in entry.default.views}
        keep = {(name, v) for name, entry in entries.items() for v in entry.versions}
        self.entries, self.views = entries, views
        with self._lock:
            gone = [key for key in self._loaded if key not in keep]
            retired = [self._loaded.pop(key) for key in gone]
        for served in retired:
            publish(served, 0)
            retire(served)

    def entry(self, name: str) -> Entry:
        entry = self.entries.get(name)
        if entry is None:
            raise ClientError("model", f"no model {name!r} is served; see GET /models (served: {', '.join(self.entries)})", "unknown_model", 404)
        return entry

    def route(self, name: str, task: str, headers) -> Route:
        entry = self.entry(name)
        if entry.default.task != task:
            raise ClientError("model", f"{name} is a {entry.default.task} model, not {task}", "wrong_task")
        return entry.route(headers)

    def view(self, name: str, headers) -> tuple[Route, TensorView]:
        """The route and the tensor view of V2 model / `/infer/` name `name`."""
        if name not in self.views:
            raise ClientError("model", f"no model {name!r}; the tensor models are {sorted(self.views)}", "unknown_model", 404)
        model, view = self.views[name]
        route = self.entries[model].route(headers)
        return route, route.primary.views[view]

    def first_of(self, task: str, preferred: str) -> str:
        """The model a task endpoint uses when a request names none."""
        if preferred in self.entries:
            return preferred
        return next((name for name, e in self.entries.items() if e.default.task == task), preferred)

    def version_of(self, name: str) -> str:
        entry = self.entries.get(name)
        return entry.state.default if entry else ""


def desired_states(file_states: dict) -> dict[str, ModelState]:
    """The state file's models (None: unloaded), and every other stored model at its latest."""
    states = {}
    for name, latest in stored_models().items():
        if name in file_states:
            if file_states[name] is not None:
                states[name] = ModelState.from_dict(file_states[name])
        else:
            states[name] = ModelState(default=latest)
    for name, named in file_states.items():  # named by the file but gone from the store
        if named is not None and name not in states:
            states[name] = ModelState.from_dict(named)
    return states


CHECKED_BY = "MODELSERVE_STORE_CHECKED_BY"


def check_once() -> None:
    """Load everything the serving state names once, in the `bentoml serve` process when it
    imports the service, and drop it: a missing, damaged or unloadable model stops the server
    with its message and a non-zero exit (a failure in a worker would only make BentoML start
    the worker again, forever). The workers, its children, inherit its mark and skip this;
    each loads and checks every model anyway."""
    if os.environ.get(CHECKED_BY) == str(os.getppid()):
        return
    _, models = state.read()
    states = desired_states(models)
    if not states:
        store = os.environ.get("BENTOML_HOME", "~/bentoml")
        raise ModelLoadError(f"no model in the model store {store}: run `make models`, or `python -m export import MODEL.onnx ...`")
    for name, model_state in states.items():
        for version in model_state.versions():
            load_stored(name, version, 1)
    os.environ[CHECKED_BY] = str(os.getpid())


def publish(served: ServedModel, loaded: int) -> None:
    for info in served.loaded.metadata["onnx_files"].values():
        metrics.MODEL_INFO.labels(model=served.name, version=served.version, sha256=info["sha256"]).set(loaded)


async def in_thread(function, *args):
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)
