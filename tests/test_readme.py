"""Every curl command of the README's REST API section, run as written against the real server."""

import os
import re
import subprocess

import pytest

from conftest import ROOT


def readme_curl_commands() -> list[str]:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme.split("## REST API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.startswith("curl ")]


def test_the_readme_shows_every_endpoint():
    shown = " ".join(readme_curl_commands())
    for path in ("/classify/image", "/classify ", "/sentiment", "/gan/generate", "/vae/sample", "/vae/reconstruct",
                 "/vae/interpolate ", "/vae/interpolate/images", "/infer/cnn", "/models", "/readyz", "/metrics"):
        assert f"localhost:3000{path}" in shown + " ", path


@pytest.mark.parametrize("command", readme_curl_commands())
def test_readme_curl_example_works(server, tmp_path, command):
    os.symlink(os.path.join(ROOT, "examples"), tmp_path / "examples")
    # -f: an HTTP error status fails curl; -S: say why.
    runnable = command.replace("http://localhost:3000", server).replace("curl -s ", "curl -sSf ", 1)
    result = subprocess.run(["bash", "-c", runnable], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{command}\n{result.stderr}"
    output = re.search(r"-o (\S+)", command)
    if output:
        with open(tmp_path / output.group(1), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    else:
        assert result.stdout.strip()
