"""Training data -> verified ONNX models in the BentoML model store. Run `python -m export --help`."""

import os

# Project-local model store unless the environment says otherwise; set before bentoml is imported.
os.environ.setdefault("BENTOML_HOME", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".bentoml"))
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
