"""Every test run gets its own empty model store and report folder, set before bentoml loads."""

import os
import shutil
import tempfile

_scratch = tempfile.mkdtemp(prefix="modelserve-tests-")
os.environ["BENTOML_HOME"] = os.path.join(_scratch, "bentoml")
os.environ["REPORTS_DIR"] = os.path.join(_scratch, "reports")
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
os.environ.setdefault("TRAIN_THREADS", "2")


def pytest_unconfigure(config):
    shutil.rmtree(_scratch, ignore_errors=True)
