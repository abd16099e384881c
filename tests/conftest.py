"""Every test run gets its own empty model store and report folder, set before bentoml loads.

`smoke_store` trains every model of EXPORT_ORDER with the tiny smoke profile into that store (their floors
replaced explicitly: smoke models cannot earn the real ones, which `make models` applies);
`server` runs a real `bentoml serve` on it, on a free 127.0.0.1 port, and always stops it.
"""

import dataclasses
import os
import shutil
import tempfile

import pytest

from load_tests.server import ROOT, running

_scratch = tempfile.mkdtemp(prefix="modelserve-tests-")
os.environ["BENTOML_HOME"] = os.path.join(_scratch, "bentoml")
os.environ["REPORTS_DIR"] = os.path.join(_scratch, "reports")
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
os.environ.setdefault("TRAIN_THREADS", "2")


def pytest_unconfigure(config):
    shutil.rmtree(_scratch, ignore_errors=True)


def any_quality(name: str):
    """The spec with a floor every smoke-trained model meets, to test what is around the floor."""
    from modelspec import SPECS, Floor

    spec = SPECS[name]
    if spec.floor.relative_to is None:
        return dataclasses.replace(spec, floor=Floor(spec.floor.metric, minimum=0.0), also=())
    return dataclasses.replace(spec, floor=dataclasses.replace(spec.floor, max_drop=1.0))


@pytest.fixture(scope="session")
def smoke_store():
    """{name: Result} for every model of EXPORT_ORDER, trained with the smoke profile into the test store."""
    from export import pipeline
    from export.recipe import TrainOptions
    from modelspec import EXPORT_ORDER

    options = TrainOptions(profile="smoke", progress=False)
    return {name: pipeline.run(name, options, spec_override=any_quality(name)) for name in EXPORT_ORDER}


@pytest.fixture(scope="session")
def server(smoke_store):
    with running({"MODELSERVE_WORKERS": "2"}, log_dir=_scratch) as url:
        yield url


LIVE_ADMIN_KEY = "admin-secret-1"
LIVE_ENV = {"MODELSERVE_WORKERS": "2", "MODELSERVE_ADMIN_KEYS": LIVE_ADMIN_KEY}


@pytest.fixture(scope="session")
def versions(smoke_store, server):
    """(v1, v2): the smoke store's cnn and a second one, trained with another seed (after the
    session server started: it keeps serving the first)."""
    import bentoml

    from export import pipeline
    from export.recipe import TrainOptions

    second = pipeline.run("cnn", TrainOptions(profile="smoke", progress=False, seed=1), spec_override=any_quality("cnn"))
    return bentoml.models.get(smoke_store["cnn"].tag).tag.version, bentoml.models.get(second.tag).tag.version


@pytest.fixture(scope="session")
def live(versions):
    """A 2-worker server with the admin API on (no client keys), for live updates."""
    with running(LIVE_ENV, log_dir=_scratch) as url:
        yield url
