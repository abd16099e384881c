"""Open Inference Protocol (KServe V2, Triton HTTP/REST) for every tensor view of the registry.

Each V2 model is a tensor view of a served model (service/tasks.py): the model itself, or
`model-encoder` / `model-decoder` for a model of several graphs. Requests go through the
registry's routing (versions pinned by the path or `X-Model-Version`, canary, shadow) and the
same batchers, checks and metrics as the native endpoints. JSON tensors and the binary tensor
data extension are both understood; errors answer `{"error": message}` as the protocol says.
Triton's statistics (`/stats`) and model configuration (`/config`) extensions are answered
here; its repository extension, an admin route, in service/admin.py.
"""

from __future__ import annotations

import json
import math
import struct

import bentoml
import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelspec import TensorSpec
from service import metrics, stats
from service.errors import ClientError
from service.tasks import BATCH_WAIT_MS

SERVER_NAME = "modelserve"
SERVER_VERSION = "0.1.0"
HEADER_LENGTH = "Inference-Header-Content-Length"

DATATYPE_OF = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32", "uint8": "UINT8", "bool": "BOOL", "bytes": "BYTES"}
NUMPY_OF = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32, "UINT8": np.uint8, "BOOL": np.bool_}

EXTENSIONS = ["binary_tensor_data", "statistics", "model_repository", "model_configuration"]
TRITON_TYPE = {"float32": "TYPE_FP32", "float64": "TYPE_FP64", "int64": "TYPE_INT64", "int32": "TYPE_INT32", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL", "bytes": "TYPE_STRING"}


class V2Error(Exception):
    def __init__(self, message: str, status: int = 400, reason: str = "invalid"):
        super().__init__(message)
        self.status, self.reason = status, reason


def error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def routed(request: Request):
    """(registry, route, view) of the request's V2 model; a version in the path pins it."""
    registry = bentoml.get_current_service().registry
    headers = dict(request.headers)
    if request.path_params.get("version"):
        headers["x-model-version"] = request.path_params["version"]
    route, view = registry.view(request.path_params["name"], headers)
    return registry, route, view


def describe_tensor(t: TensorSpec) -> dict:
    return {"name": t.name, "datatype": DATATYPE_OF[t.dtype], "shape": list(t.shape)}


def v2_errors(handler):
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except (ClientError, V2Error) as e:
            return error(str(e), e.status)

    return endpoint


async def server_metadata(request: Request) -> JSONResponse:
    return JSONResponse({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS})


async def live(request: Request) -> JSONResponse:
    return JSONResponse({"live": True})


async def ready(request: Request) -> JSONResponse:
    is_ready = getattr(bentoml.get_current_service(), "ready", False)
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


@v2_errors
async def model_metadata(request: Request) -> JSONResponse:
    registry, route, view = routed(request)
    return JSONResponse(
        {
            "name": view.name,
            "versions": list(registry.entries[route.model].versions),
            "platform": "onnxruntime_onnx",
            "inputs": [describe_tensor(t) for t in view.inputs],
            "outputs": [describe_tensor(t) for t in view.outputs],
        }
    )


@v2_errors
async def model_ready(request: Request) -> JSONResponse:
    _, _, view = routed(request)
    return JSONResponse({"name": view.name, "ready": True})


@v2_errors
async def model_stats(request: Request) -> JSONResponse:
    """Triton's statistics extension: per loaded version, summed over the workers."""
    registry, route, view = routed(request)
    figures = stats.collect()
    pinned = request.path_params.get("version")
    versions = [pinned] if pinned else list(registry.entries[route.model].versions)
    return JSONResponse({"model_stats": [stats.triton(view.name, v, figures.get((route.model, v), {})) for v in versions]})


def triton_tensor(t: TensorSpec, batched: bool) -> dict:
    dims = list(t.shape[1:]) if batched else list(t.shape)
    return {"name": t.name, "data_type": TRITON_TYPE[t.dtype], "dims": dims or [1]}


@v2_errors
async def model_config(request: Request) -> JSONResponse:
    """Triton's model configuration: inputs, outputs, batching (dims leave out the batch axis)."""
    _, route, view = routed(request)
    max_batch = route.primary.max_batch
    batched = max_batch > 1
    config = {
        "name": view.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": {"specific": {"versions": [route.primary.version]}},
        "max_batch_size": max_batch if batched else 0,
        "input": [triton_tensor(t, batched) for t in view.inputs],
        "output": [triton_tensor(t, batched) for t in view.outputs],
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
    }
    if batched:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": int(BATCH_WAIT_MS * 1000), "preferred_batch_size": []}
    return JSONResponse(config)


def split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON request and, with the binary extension, the raw tensor bytes after it."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise V2Error(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        if not 0 <= n <= len(body):
            raise V2Error(f"{HEADER_LENGTH} {n} is outside the body's {len(body)} bytes")
        json_part, binary = body[:n], body[n:]
    try:
        request = json.loads(json_part)
    except (ValueError, RecursionError):
        raise V2Error("the body is not a JSON inference request") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise V2Error("the request needs an `inputs` list")
    return request, binary


def deserialize_bytes(raw: bytes) -> list[bytes]:
    """The binary BYTES layout: each element is a 4-byte little-endian length, then its bytes."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise V2Error("BYTES tensor data ends inside an element length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise V2Error("BYTES tensor data ends inside an element")
        items.append(raw[offset : offset + size])
        offset += size
    return items


def read_input(tensor: dict, expected: TensorSpec, binary: bytes, offset: int) -> tuple[object, int]:
    """One request input -> an array (or a list of strings for BYTES), checked against the
    spec; returns it and the offset of the next binary chunk."""
    name = expected.name
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    if datatype != DATATYPE_OF[expected.dtype]:
        raise V2Error(f"input {name!r} must have datatype {DATATYPE_OF[expected.dtype]}, got {datatype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise V2Error(f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}")
    if len(shape) != len(expected.shape) or any(e != -1 and d != e for d, e in zip(shape, expected.shape)):
        raise V2Error(f"input {name!r}: shape {shape} does not match {list(expected.shape)} (-1: any)")
    if shape[0] == 0:
        raise V2Error(f"input {name!r}: the batch is empty")
    count = math.prod(shape)
    size = parameters(tensor, f"input {name!r}").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise V2Error(f"input {name!r}: binary_data_size {size!r} is outside the binary data")
        raw, offset = binary[offset : offset + size], offset + size
        if datatype == "BYTES":
            data = deserialize_bytes(raw)
        else:
            itemsize = np.dtype(NUMPY_OF[datatype]).itemsize
            if len(raw) != count * itemsize:
                raise V2Error(f"input {name!r}: {len(raw)} bytes of binary data, shape {shape} needs {count * itemsize}")
            data = np.frombuffer(raw, dtype=NUMPY_OF[datatype]).reshape(shape)
    elif "data" in tensor:
        data = tensor["data"]
        if datatype != "BYTES":
            try:
                data = np.asarray(data, dtype=NUMPY_OF[datatype])
            except (ValueError, TypeError, OverflowError):
                raise V2Error(f"input {name!r}: data is not a list of {datatype} numbers") from None
            if data.size != count:
                raise V2Error(f"input {name!r}: {data.size} values, shape {shape} needs {count}")
            data = data.reshape(shape)
    else:
        raise V2Error(f"input {name!r} has neither `data` nor binary_data_size")
    if datatype == "BYTES":
        flat = data if isinstance(data, list) else []
        if len(flat) != count:
            raise V2Error(f"input {name!r}: {len(flat)} strings, shape {shape} needs {count}")
        try:
            data = [item.decode("utf-8") if isinstance(item, bytes) else item for item in flat]
        except UnicodeDecodeError:
            raise V2Error(f"input {name!r}: the text is not UTF-8") from None
        if not all(isinstance(item, str) for item in data):
            raise V2Error(f"input {name!r}: BYTES data must be strings")
    elif data.dtype.kind == "f" and not np.isfinite(data).all():
        raise V2Error(f"input {name!r}: NaN or infinite values")
    return data, offset


def parameters(part: dict, where: str) -> dict:
    found = part.get("parameters") or {}
    if not isinstance(found, dict):
        raise V2Error(f"{where}: `parameters` must be an object")
    return found


def wants_binary(request: dict, output_name: str) -> bool:
    for asked in request.get("outputs") or []:
        if isinstance(asked, dict) and asked.get("name") == output_name:
            return bool(parameters(asked, f"output {output_name!r}").get("binary_data", False))
    return bool(parameters(request, "the request").get("binary_data_output", False))


def encode_outputs(request: dict, outputs: tuple[TensorSpec, ...], result: dict[str, np.ndarray]) -> tuple[list[dict], bytes]:
    """Each named output (all, or those the request asks for) as JSON data or binary data."""
    asked_for = request.get("outputs")
    if asked_for is not None and not isinstance(asked_for, list):
        raise V2Error("`outputs` must be a list of {\"name\": ...} objects")
    asked = [o.get("name") for o in asked_for or [] if isinstance(o, dict)]
    unknown = [a for a in asked if a not in {o.name for o in outputs}]
    if unknown:
        raise V2Error(f"unknown outputs {unknown}; this model has {[o.name for o in outputs]}")
    encoded, binary = [], b""
    for spec in outputs:
        if asked and spec.name not in asked:
            continue
        array = np.ascontiguousarray(result[spec.name], dtype=NUMPY_OF[DATATYPE_OF[spec.dtype]])
        entry = {"name": spec.name, "datatype": DATATYPE_OF[spec.dtype], "shape": list(array.shape)}
        if wants_binary(request, spec.name):
            raw = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            binary += raw
        else:
            entry["data"] = array.ravel().tolist()
        encoded.append(entry)
    return encoded, binary


@v2_errors
async def infer(request: Request) -> Response:
    registry, route, view = routed(request)
    body, binary = split_body(await request.body(), request.headers.get(HEADER_LENGTH))
    tensors = [t for t in body["inputs"] if isinstance(t, dict)]
    names = [t.get("name") for t in tensors]
    expected = [t.name for t in view.inputs]
    if len(tensors) != len(body["inputs"]) or sorted(map(str, names)) != sorted(expected) or len(set(map(str, names))) != len(names):
        raise V2Error(f"model {view.name!r} takes inputs {expected}, got {names}")
    offset, values = 0, {}
    for tensor in tensors:
        spec = next(s for s in view.inputs if s.name == tensor["name"])
        values[spec.name], offset = read_input(tensor, spec, binary, offset)
        tensor.pop("data", None)  # JSON lists, freed before the wait for a batch (as in /classify)
    try:
        feeds = route.primary.read_inputs(view, values, field_prefix="input ")
    except ClientError as e:
        metrics.REJECTED.labels(endpoint="v2_infer", model=route.model, version=route.primary.version, reason=e.reason).inc()
        raise
    result = await route.call("infer", view.name, feeds)
    encoded, out_binary = encode_outputs(body, view.outputs, result)
    answer = {"model_name": view.name, "model_version": route.primary.version, "outputs": encoded}
    if "id" in body:
        answer["id"] = body["id"]
    header = json.dumps(answer, separators=(",", ":")).encode()
    if not out_binary:
        return route.answer(Response(header, media_type="application/json"))
    return route.answer(Response(header + out_binary, media_type="application/octet-stream", headers={HEADER_LENGTH: str(len(header))}))


routes = [
    Route("/v2", server_metadata),
    Route("/v2/health/live", live),
    Route("/v2/health/ready", ready),
    Route("/v2/models/{name}", model_metadata),
    Route("/v2/models/{name}/versions/{version}", model_metadata),
    Route("/v2/models/{name}/ready", model_ready),
    Route("/v2/models/{name}/versions/{version}/ready", model_ready),
    Route("/v2/models/{name}/infer", infer, methods=["POST"]),
    Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
    Route("/v2/models/{name}/stats", model_stats),
    Route("/v2/models/{name}/versions/{version}/stats", model_stats),
    Route("/v2/models/{name}/config", model_config),
    Route("/v2/models/{name}/versions/{version}/config", model_config),
]
