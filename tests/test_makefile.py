"""The README's two commands do all the set-up: `make setup` installs the Debian packages the
tests call, and `make serve` says why the stored models failed their check before it retrains."""

import os
import re
import shutil
import subprocess

from conftest import ROOT


def make_variable(name: str) -> str:
    database = subprocess.run(["make", "-pn", "-C", ROOT, "setup"], capture_output=True, text=True, timeout=60).stdout
    match = re.search(rf"^{name} :?= (.*)$", database, flags=re.M)
    assert match, f"no {name} in the Makefile"
    return match.group(1)


def test_make_setup_installs_every_debian_package_the_tests_call():
    packages = make_variable("SYSTEM_PACKAGES").split()
    for needed in ("prometheus", "buildah", "debootstrap", "wrk"):
        assert needed in packages, needed
    setup = subprocess.run(["make", "-n", "-C", ROOT, "setup"], capture_output=True, text=True, timeout=60).stdout
    assert "apt-get install" in setup
    for command in ("prometheus", "promtool", "buildah", "debootstrap", "wrk"):
        assert shutil.which(command), f"{command}: `make setup` should have installed it"


def test_make_serve_says_why_the_models_failed_their_check(tmp_path):
    """A stand-in python: `-m export verify` fails with a reason, `-m export all` fails too (so
    nothing is trained or served); make must show the reason."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "python"
    fake.write_text('#!/bin/sh\nif [ "$3" = verify ]; then echo "cnn: model.onnx does not match the sha256 in its metadata"; exit 1; fi\nexit 3\n')
    fake.chmod(0o755)
    (venv / ".installed").touch()
    os.utime(venv / ".installed", (2**31 - 1, 2**31 - 1))  # newer than pyproject.toml: no reinstall
    result = subprocess.run(["make", "-C", ROOT, "serve", f"VENV={venv}"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "does not match the sha256" in result.stdout and "make models" in result.stdout, result.stdout + result.stderr
