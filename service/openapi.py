"""The OpenAPI description of the routes BentoML's typed APIs cannot be (service.py's plain
routes and the Open Inference Protocol), added to /docs.json by patches.document_answers, so
that clients see them and schemathesis fuzzes them like the rest."""

from __future__ import annotations

ERROR = {
    "type": "object",
    "required": ["error", "detail", "field"],
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}, "field": {"type": "string", "nullable": True}},
}
V2_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
OBJECT = {"type": "object", "additionalProperties": True}
NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
TENSOR = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string", "enum": ["FP32", "FP64", "INT64", "INT32", "UINT8", "BOOL", "BYTES"]},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "data": {"type": "array"},
        "parameters": OBJECT,
    },
}
V2_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "items": TENSOR, "minItems": 1},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "parameters": OBJECT}}},
        "parameters": OBJECT,
    },
}


GUARD = (401, 413, 429, 504)  # the guard's refusals, in its own shape (which has `error` too)


def answers(ok: dict, *errors: int, v2: bool = False, media: str = "application/json") -> dict:
    out = {"200": {"description": "OK", "content": {media: {"schema": ok}}}}
    for status in errors:
        out[str(status)] = {"description": "refused", "content": {"application/json": {"schema": V2_ERROR if v2 else ERROR}}}
    for status in GUARD:
        out[str(status)] = {"description": "refused by the guard", "content": {"application/json": {"schema": ERROR}}}
    return out


def get(summary: str, ok: dict, *errors: int, params=(), v2: bool = False) -> dict:
    return {"get": {"summary": summary, "tags": ["Service APIs"], "parameters": list(params), "responses": answers(ok, *errors, v2=v2)}}


def post(summary: str, body: dict, ok: dict, *errors: int, params=(), v2: bool = False) -> dict:
    return {
        "post": {
            "summary": summary,
            "tags": ["Service APIs"],
            "parameters": list(params),
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": answers(ok, *errors, v2=v2),
        }
    }


MODELS = {"type": "object", "required": ["models"], "properties": {"models": {"type": "array", "items": OBJECT}}}
INFER_ANSWER = {
    "type": "object",
    "required": ["model", "version", "outputs"],
    "properties": {"model": {"type": "string"}, "version": {"type": "string"}, "outputs": {"type": "object", "additionalProperties": {"type": "array"}}},
}
V2_ANSWER = {"type": "object", "required": ["model_name", "outputs"], "properties": {"model_name": {"type": "string"}, "model_version": {"type": "string"}, "outputs": {"type": "array", "items": OBJECT}}}

PATHS = {
    "/models": get("Every served model: metadata, loaded versions, roles, traffic shares, figures", MODELS),
    "/models/{name}": get("One served model", OBJECT, 404, params=[NAME]),
    "/infer/{name}": post(
        "Tensors in, tensors out: {input name: array} -> {outputs: {output name: array}} (a tensor view: GET /models)",
        {"type": "object", "additionalProperties": {"type": "array"}, "minProperties": 1},
        INFER_ANSWER, 400, 404, params=[NAME],
    ),
    "/v2": get("Open Inference Protocol: server metadata", OBJECT, v2=True),
    "/v2/health/live": get("Open Inference Protocol: live", OBJECT, v2=True),
    "/v2/health/ready": get("Open Inference Protocol: ready", OBJECT, v2=True),
    "/v2/models/{name}": get("Open Inference Protocol: model metadata", OBJECT, 404, params=[NAME], v2=True),
    "/v2/models/{name}/ready": get("Open Inference Protocol: model ready", OBJECT, 404, params=[NAME], v2=True),
    "/v2/models/{name}/stats": get("Triton statistics extension", OBJECT, 404, params=[NAME], v2=True),
    "/v2/models/{name}/config": get("Triton model configuration", OBJECT, 404, params=[NAME], v2=True),
    "/v2/models/{name}/infer": post("Open Inference Protocol: inference (JSON tensors)", V2_REQUEST, V2_ANSWER, 400, 404, params=[NAME], v2=True),
    "/v2/models/{name}/versions/{version}/infer": post(
        "Open Inference Protocol: inference on one loaded version", V2_REQUEST, V2_ANSWER, 400, 404, params=[NAME, VERSION], v2=True
    ),
}
