"""Open Inference Protocol (KServe V2, Triton HTTP/REST) for every tensor endpoint.

Each V2 model is one `/infer/*` batcher of the service, so V2 requests join the same
batches and metrics as the native endpoints. JSON tensors and the binary tensor data
extension are both understood; errors answer `{"error": message}` as the protocol says.
"""

from __future__ import annotations

import json
import struct

import bentoml
import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelspec import TensorSpec
from service import inputs as limits
from service import metrics
from service.errors import ClientError

SERVER_NAME = "modelserve"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data"]
HEADER_LENGTH = "Inference-Header-Content-Length"

DATATYPE_OF = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32", "uint8": "UINT8", "bool": "BOOL", "bytes": "BYTES"}
NUMPY_OF = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32, "UINT8": np.uint8, "BOOL": np.bool_}

# The text endpoint takes strings and answers probabilities: tokenising stays in the server.
TEXT_INPUT = TensorSpec("text", "bytes", (-1,), "text")
TEXT_OUTPUT = TensorSpec("probabilities", "float32", (-1, 2), "probabilities")


class V2Error(Exception):
    def __init__(self, message: str, status: int = 400, reason: str = "invalid"):
        super().__init__(message)
        self.status, self.reason = status, reason


def error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def signature(service, name: str) -> tuple[str, tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(stored model, inputs, outputs) of V2 model `name`, i.e. of batcher `name`."""
    if name not in service.batchers:
        raise V2Error(f"no model {name!r}; GET /v2/models/<name> for one of {sorted(service.batchers)}", 404, "unknown_model")
    model, filename = service.graph_of[name]
    if filename is None:
        return model, (TEXT_INPUT,), (TEXT_OUTPUT,)
    graph = service.graph(model, filename)
    return model, graph.inputs, graph.outputs


def describe_tensor(t: TensorSpec) -> dict:
    return {"name": t.name, "datatype": DATATYPE_OF[t.dtype], "shape": list(t.shape)}


def checked_version(service, name: str, request: Request) -> str:
    model, _, _ = signature(service, name)
    version = service.models[model].version
    asked = request.path_params.get("version")
    if asked not in (None, "", version):
        raise V2Error(f"model {name!r} has version {version!r}, not {asked!r}", 404, "unknown_version")
    return version


async def server_metadata(request: Request) -> JSONResponse:
    return JSONResponse({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS})


async def live(request: Request) -> JSONResponse:
    return JSONResponse({"live": True})


async def ready(request: Request) -> JSONResponse:
    is_ready = getattr(bentoml.get_current_service(), "ready", False)
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


async def model_metadata(request: Request) -> JSONResponse:
    service, name = bentoml.get_current_service(), request.path_params["name"]
    try:
        version = checked_version(service, name, request)
    except V2Error as e:
        return error(str(e), e.status)
    _, ins, outs = signature(service, name)
    return JSONResponse(
        {
            "name": name,
            "versions": [version],
            "platform": "onnxruntime_onnx",
            "inputs": [describe_tensor(t) for t in ins],
            "outputs": [describe_tensor(t) for t in outs],
        }
    )


async def model_ready(request: Request) -> JSONResponse:
    service, name = bentoml.get_current_service(), request.path_params["name"]
    try:
        checked_version(service, name, request)
    except V2Error as e:
        return error(str(e), e.status)
    return JSONResponse({"name": name, "ready": True})


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
    count = int(np.prod(shape))
    size = (tensor.get("parameters") or {}).get("binary_data_size")
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
            except (ValueError, TypeError):
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


def wants_binary(request: dict, output_name: str) -> bool:
    for asked in request.get("outputs") or []:
        if isinstance(asked, dict) and asked.get("name") == output_name:
            return bool((asked.get("parameters") or {}).get("binary_data", False))
    return bool((request.get("parameters") or {}).get("binary_data_output", False))


def encode_outputs(request: dict, outputs: tuple[TensorSpec, ...], result: np.ndarray) -> tuple[list[dict], bytes]:
    """Split the batcher's answer into the named outputs (side by side along axis 1 when a
    graph has several) and encode each as JSON data or binary data."""
    asked = [o.get("name") for o in request.get("outputs") or [] if isinstance(o, dict)]
    unknown = [a for a in asked if a not in {o.name for o in outputs}]
    if unknown:
        raise V2Error(f"unknown outputs {unknown}; this model has {[o.name for o in outputs]}")
    widths = [o.shape[1] for o in outputs]
    parts = np.split(result, np.cumsum(widths)[:-1], axis=1) if len(outputs) > 1 else [result]
    encoded, binary = [], b""
    for spec, array in zip(outputs, parts):
        if asked and spec.name not in asked:
            continue
        array = np.ascontiguousarray(array, dtype=NUMPY_OF[DATATYPE_OF[spec.dtype]])
        entry = {"name": spec.name, "datatype": DATATYPE_OF[spec.dtype], "shape": list(array.shape)}
        if wants_binary(request, spec.name):
            raw = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            binary += raw
        else:
            entry["data"] = array.ravel().tolist()
        encoded.append(entry)
    return encoded, binary


async def infer(request: Request) -> Response:
    service, name = bentoml.get_current_service(), request.path_params["name"]
    try:
        version = checked_version(service, name, request)
        model, inputs, outputs = signature(service, name)
        body, binary = split_body(await request.body(), request.headers.get(HEADER_LENGTH))
        by_name = {t.get("name"): t for t in body["inputs"] if isinstance(t, dict)}
        if set(by_name) != {t.name for t in inputs} or len(body["inputs"]) != len(inputs):
            raise V2Error(f"model {name!r} takes inputs {[t.name for t in inputs]}, got {list(by_name)}")
        offset, arrays = 0, []
        for t in body["inputs"]:
            spec = next(s for s in inputs if s.name == t["name"])
            data, offset = read_input(t, spec, binary, offset)
            arrays.append(data)
        rows = arrays[0]
        if len(rows) > limits.MAX_ITEMS:
            raise V2Error(f"{len(rows)} rows is more than the limit of {limits.MAX_ITEMS} per request", reason="too_many_items")
        if isinstance(rows, list):
            rows = limits.texts(rows)
        result = await service.batchers[name](rows)
        encoded, out_binary = encode_outputs(body, outputs, result)
    except ClientError as e:
        return error(str(e), e.status)
    except V2Error as e:
        loaded = service.models.get(service.graph_of.get(name, (None,))[0])
        if loaded is not None:
            metrics.REJECTED.labels(endpoint="v2_infer", model=loaded.name, version=loaded.version, reason=e.reason).inc()
        return error(str(e), e.status)
    answer = {"model_name": name, "model_version": version, "outputs": encoded}
    if "id" in body:
        answer["id"] = body["id"]
    header = json.dumps(answer, separators=(",", ":")).encode()
    if not out_binary:
        return Response(header, media_type="application/json")
    return Response(header + out_binary, media_type="application/octet-stream", headers={HEADER_LENGTH: str(len(header))})


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
]
