"""The demo page: GET /ui and its three static files under /ui/, served by the service itself.

The page (service/ui/) is plain HTML, CSS and JavaScript: no build step, nothing fetched from
anywhere but this server. It calls the public REST API as any client would, with the API key
typed into it. Its own files carry no secret, so the guard lets them through without a key.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

FOLDER = Path(__file__).with_name("ui")
FILES = {"app.js": "text/javascript", "style.css": "text/css"}
PATH = "/ui"
PREFIX = "/ui/"
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

DESCRIPTION = f"""\
Trained models behind a REST API, run with ONNX Runtime.

**[Demo page]({PATH.lstrip("/")})**: draw a digit, classify reviews, generate digits, see the loaded models and versions.

`GET /models` lists the loaded models; every error answers `{{"error", "detail", "field"}}`.
"""


async def index(request: Request) -> Response:
    return FileResponse(FOLDER / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS)


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in FILES:  # a fixed list: no path from the request ever reaches the file system
        return Response(status_code=404)
    return FileResponse(FOLDER / name, media_type=f"{FILES[name]}; charset=utf-8", headers=HEADERS)


routes = [Route(PATH, index), Route(PREFIX, index), Route(PREFIX + "{name}", static)]
