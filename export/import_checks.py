"""What `python -m export import` checks in a graph's signature, and the preprocessing it stores."""

from __future__ import annotations

import onnx
from onnx import helper

from modelspec import IMAGE_CLASSIFICATION, IMAGE_PREPROCESSING, GraphSpec, TensorSpec


class ImportRefused(ValueError):
    """The model (or the import's arguments) fails a check; the message names the problem. Nothing is stored."""


def tensor_spec(value: onnx.ValueInfoProto, kind: str) -> TensorSpec:
    tensor_type = value.type.tensor_type
    if not value.type.HasField("tensor_type"):
        raise ImportRefused(f"{value.name!r} is not a tensor (sequences and maps are not served)")
    try:
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
    except (KeyError, ValueError):
        raise ImportRefused(f"{value.name!r} has an element type numpy cannot hold ({tensor_type.elem_type})") from None
    if not tensor_type.HasField("shape"):
        raise ImportRefused(f"{value.name!r} declares no shape")
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim)
    return TensorSpec(value.name, dtype, shape, kind)


def signature(model: onnx.ModelProto) -> GraphSpec:
    """The graph's inputs (initializers left out) and outputs, -1 for every dynamic axis."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = tuple(tensor_spec(v, "tensor") for v in model.graph.input if v.name not in initializers)
    outputs = tuple(tensor_spec(v, "tensor") for v in model.graph.output)
    if not inputs or not outputs:
        raise ImportRefused(f"the graph has {len(inputs)} inputs and {len(outputs)} outputs; it needs at least one of each")
    return GraphSpec("model.onnx", inputs, outputs)


def check_task(task: str, graph: GraphSpec, fixed_batch: bool) -> None:
    """The batch axis, and for image-classification one float32 [N, C, H, W] input with C 1 or 3
    and one [N, K] output. Rewrites nothing: raises ImportRefused on the first problem."""
    for t in graph.inputs + graph.outputs:
        if not t.shape:
            raise ImportRefused(f"{t.name!r} is a scalar: it has no batch axis")
        if fixed_batch and t.shape[0] == -1:
            raise ImportRefused(f"--fixed-batch: the batch axis of {t.name!r} is dynamic ({list(t.shape)}): leave the flag out")
        if fixed_batch and t.shape[0] != 1:
            raise ImportRefused(f"--fixed-batch: {t.name!r} has batch axis {t.shape[0]}; a fixed batch axis must be 1")
        if not fixed_batch and t.shape[0] != -1:
            raise ImportRefused(
                f"{t.name!r} has a fixed batch axis ({list(t.shape)}): export it with a dynamic batch axis, "
                "or import it with --fixed-batch (it is then never batched)"
            )
    if task != IMAGE_CLASSIFICATION:
        return
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ImportRefused(
            f"{task} needs one input and one output; the graph has {len(graph.inputs)} inputs and {len(graph.outputs)} outputs "
            "(import it as --task tensor)"
        )
    image, scores = graph.inputs[0], graph.outputs[0]
    if len(image.shape) != 4:
        raise ImportRefused(f"{task}: input {image.name!r} has shape {list(image.shape)}; expected [N, C, H, W]")
    if image.shape[1] not in (1, 3):
        raise ImportRefused(f"{task}: input {image.name!r} has {image.shape[1]} channels (axis 1 of {list(image.shape)}); expected 1 or 3")
    if image.dtype != "float32":
        raise ImportRefused(f"{task}: input {image.name!r} is {image.dtype}; expected float32")
    if len(scores.shape) != 2 or scores.shape[1] < 2:
        raise ImportRefused(f"{task}: output {scores.name!r} has shape {list(scores.shape)}; expected [N, K] with K >= 2 classes")
    if scores.dtype not in ("float32", "float16", "float64"):
        raise ImportRefused(f"{task}: output {scores.name!r} is {scores.dtype}; expected floating-point scores")


CHOICES = {
    "polarity": ("light_on_dark", "dark_on_light", "as_is"),
    "framing": ("crop_to_content", "resize"),
    "resample": ("bilinear", "box", "nearest"),
}
NUMBER_LISTS = {"size": 2, "value_range": 2, "mean": None, "std": None}
IMPORT_DEFAULTS = {"value_range": [0.0, 1.0], "polarity": "as_is", "framing": "resize", "resample": IMAGE_PREPROCESSING["resample"]}


def parse_value(key: str, text: str):
    if key in CHOICES:
        if text not in CHOICES[key]:
            raise ImportRefused(f"--preprocessing {key}={text}: use one of {', '.join(CHOICES[key])}")
        return text
    if key == "channels":
        if text not in ("1", "3"):
            raise ImportRefused(f"--preprocessing channels={text}: use 1 or 3")
        return int(text)
    if key == "content_margin":
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not 0.0 <= value < 0.45:
            raise ImportRefused(f"--preprocessing content_margin={text}: a fraction of the side, 0 <= margin < 0.45")
        return value
    try:
        values = [float(v) for v in text.replace("x", ",").split(",")]
    except ValueError:
        raise ImportRefused(f"--preprocessing {key}={text}: expected comma-separated numbers") from None
    if NUMBER_LISTS[key] and len(values) != NUMBER_LISTS[key]:
        raise ImportRefused(f"--preprocessing {key}={text}: expected {NUMBER_LISTS[key]} numbers")
    if key == "size":
        if any(v < 1 or v != int(v) for v in values):
            raise ImportRefused(f"--preprocessing size={text}: expected two positive whole numbers H,W")
        return [int(v) for v in values]
    if key == "value_range" and not values[0] < values[1]:
        raise ImportRefused(f"--preprocessing value_range={text}: expected LO,HI with LO < HI")
    if key == "std" and any(v <= 0 for v in values):
        raise ImportRefused(f"--preprocessing std={text}: every std must be positive")
    return values


def preprocessing_for(task: str, graph: GraphSpec, pairs: list[str], fixed_batch: bool) -> dict:
    """The stored preprocessing: import defaults, the user's KEY=VALUE pairs, size and channels
    from the graph (a given value must agree with it)."""
    given = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise ImportRefused(f"--preprocessing {pair!r}: expected KEY=VALUE")
        if key not in (*CHOICES, *NUMBER_LISTS, "channels", "content_margin"):
            known = ", ".join(sorted((*CHOICES, *NUMBER_LISTS, "channels", "content_margin")))
            raise ImportRefused(f"--preprocessing: unknown key {key!r}; known keys: {known}")
        given[key] = parse_value(key, text.strip())
    if task != IMAGE_CLASSIFICATION:
        if given:
            raise ImportRefused(f"--preprocessing is for {IMAGE_CLASSIFICATION}, not {task}")
        return {"max_batch": 1} if fixed_batch else {}
    _, channels, height, width = graph.inputs[0].shape
    if "channels" in given and given["channels"] != channels:
        raise ImportRefused(f"--preprocessing channels={given['channels']}, but the graph's input has {channels}")
    if height == -1 or width == -1:
        if "size" not in given:
            raise ImportRefused(f"the input's height and width are dynamic ({list(graph.inputs[0].shape)}): give --preprocessing size=H,W")
    elif "size" in given and given["size"] != [height, width]:
        raise ImportRefused(f"--preprocessing size={given['size']}, but the graph's input is {height}x{width}")
    pre = {**IMPORT_DEFAULTS, "size": [height, width], "channels": channels, **given}
    for key in ("mean", "std"):
        if key in pre and len(pre[key]) != channels:
            raise ImportRefused(f"--preprocessing {key}: {len(pre[key])} values for {channels} channels")
    if fixed_batch:
        pre["max_batch"] = 1
    return pre
