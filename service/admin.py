"""The admin API: live updates of what the server serves, and Triton's model repository extension.

Behind the admin keys (the guard: 403 `admin_disabled` without MODELSERVE_ADMIN_KEYS, 401 for a
missing or wrong key). An update is checked and loaded in the worker that received it (sha256,
load, warm-up) before anything changes; then the new state is written (service/state.py) and
the answer waits until every worker serves it. A refused or failed update leaves the serving
state exactly as it was.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import bentoml
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service import state
from service.errors import ClientError
from service.registry import ModelState, Registry, in_thread
from service.runtime import ModelLoadError, stored_models

WORKERS = int(os.environ.get("MODELSERVE_WORKERS", 1))
# Below the guard's request timeout (30 s), so a slow update answers itself.
CONVERGE_SECONDS = float(os.environ.get("MODELSERVE_ADMIN_CONVERGE_S", 20))


def registry() -> Registry:
    return bentoml.get_current_service().registry


def stored_versions(name: str) -> list[str]:
    return [m.tag.version for m in bentoml.models.list(name)]


def check_loadable(reg: Registry, name: str, new: ModelState) -> None:
    """Every version the new state names is in the store and loads in this worker."""
    available = stored_versions(name)
    for version in new.versions():
        if version not in available:
            shown = ", ".join(available[-5:]) or "none"
            raise ClientError("version", f"{name}:{version} is not in the model store (stored: {shown})", "unknown_version", 404)
        try:
            reg.load(name, version)
        except ModelLoadError as e:
            raise ClientError("version", str(e), "load_failed", 422) from None


def update(name: str, change: Callable[[ModelState | None], ModelState | None]) -> ModelState | None:
    """Under the state lock: the new state of `name` (None: unload), checked, loaded here,
    written, and acknowledged by every worker; the old file again if any worker fails."""
    reg = registry()
    with state.locked():
        generation, models = state.read()
        current = reg.entries[name].state if name in reg.entries else None
        new = change(current)
        if new is not None:
            check_loadable(reg, name, new)
        # Every served model is written with its version pinned: later trainings of a model
        # (a new :latest in the store) never change what is served without an update.
        written = {n: e.state.to_dict() for n, e in reg.entries.items()}
        written.update({n: s for n, s in models.items() if s is None})
        written[name] = new.to_dict() if new is not None else None
        state.write(generation + 1, written)
        converged, problems = state.wait_for_workers(generation + 1, WORKERS, CONVERGE_SECONDS)
        if not converged:
            state.write(generation + 2, models)
            state.wait_for_workers(generation + 2, WORKERS, CONVERGE_SECONDS)
            raise ClientError(None, f"the update was undone: {'; '.join(problems)}", "update_failed", 503)
    return new


async def read_json(request: Request):
    try:
        return json.loads(await request.body())
    except (ValueError, RecursionError):
        raise ClientError("body", "is not JSON", "invalid_json") from None


def answered(handler):
    async def endpoint(request: Request) -> JSONResponse:
        try:
            return await handler(request, request.path_params.get("name"))
        except ClientError as e:
            if request.url.path.startswith("/v2/"):  # the protocol's own error shape
                return JSONResponse({"error": str(e)}, status_code=e.status)
            return e.response()

    return endpoint


def known(name: str) -> None:
    if name not in registry().entries and name not in stored_models():
        raise ClientError("name", f"no model {name!r} in the store or served", "unknown_model", 404)


def state_answer(name: str, new: ModelState | None) -> JSONResponse:
    return JSONResponse({"name": name, "state": new.to_dict() if new else None})


@answered
async def get_model(request: Request, name: str) -> JSONResponse:
    entry = registry().entries.get(name)
    if entry is None:
        known(name)
        return state_answer(name, None)
    return state_answer(name, entry.state)


@answered
async def put_model(request: Request, name: str) -> JSONResponse:
    body = await read_json(request)
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k != "previous"}  # GET shows it; the server keeps it
    known(name)
    return state_answer(name, await in_thread(update, name, lambda current: ModelState.from_request(body, current)))


def rolled_back(current: ModelState | None) -> ModelState:
    if current is None or current.previous is None:
        raise ClientError("name", "has no previous default to roll back to", "no_previous", 409)
    return ModelState(current.previous, current.default, None, None, current.loaded)


@answered
async def rollback(request: Request, name: str) -> JSONResponse:
    known(name)
    return state_answer(name, await in_thread(update, name, rolled_back))


def unloaded(name: str) -> Callable[[ModelState | None], None]:
    def change(current: ModelState | None) -> None:
        entries = registry().entries
        if current is None:
            raise ClientError("name", f"{name} is not served", "not_served", 409)
        if len(entries) == 1:
            raise ClientError("name", f"{name} is the only model served", "last_model", 409)
        if current.canary or current.shadow:
            raise ClientError("name", f"{name} has a canary or a shadow version: PUT a state without them first", "in_use", 409)
        return None

    return change


@answered
async def delete_model(request: Request, name: str) -> JSONResponse:
    known(name)
    return state_answer(name, await in_thread(update, name, unloaded(name)))


@answered
async def list_states(request: Request, name: None) -> JSONResponse:
    return JSONResponse({"models": {n: e.state.to_dict() for n, e in registry().entries.items()}})


# Triton's model repository extension, over the same updates.


@answered
async def repository_index(request: Request, name: None) -> JSONResponse:
    entries = registry().entries
    index = []
    for model, latest in sorted({**stored_models(), **{n: e.state.default for n, e in entries.items()}}.items()):
        if model in entries:
            index.append({"name": model, "version": entries[model].state.default, "state": "READY", "reason": ""})
        else:
            index.append({"name": model, "version": latest, "state": "UNAVAILABLE", "reason": "unloaded"})
    return JSONResponse(index)


@answered
async def repository_load(request: Request, name: str) -> JSONResponse:
    known(name)
    if name not in registry().entries:
        latest = stored_models().get(name)
        await in_thread(update, name, lambda current: ModelState(default=latest))
    return JSONResponse({})


@answered
async def repository_unload(request: Request, name: str) -> JSONResponse:
    known(name)
    await in_thread(update, name, unloaded(name))
    return JSONResponse({})


routes = [
    Route("/admin/models", list_states, methods=["GET"]),
    Route("/admin/models/{name}", get_model, methods=["GET"]),
    Route("/admin/models/{name}", put_model, methods=["PUT"]),
    Route("/admin/models/{name}", delete_model, methods=["DELETE"]),
    Route("/admin/models/{name}/rollback", rollback, methods=["POST"]),
    Route("/v2/repository/index", repository_index, methods=["POST"]),
    Route("/v2/repository/models/{name}/load", repository_load, methods=["POST"]),
    Route("/v2/repository/models/{name}/unload", repository_unload, methods=["POST"]),
]
