"""Every curl command of the README's REST API section, run as written against the real server."""

import os
import re
import subprocess

import pytest

from conftest import ROOT


def readme_curl_commands(section: str = "## REST API") -> list[str]:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    text = readme.split(section + "\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.startswith("curl ")]


def run_curl(server: str, command: str, cwd, env: dict | None = None) -> subprocess.CompletedProcess:
    # -f: an HTTP error status fails curl; -S: say why.
    runnable = command.replace("http://localhost:3000", server).replace("curl -s ", "curl -sSf ", 1)
    return subprocess.run(["bash", "-o", "pipefail", "-c", runnable], cwd=cwd, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def test_the_readme_shows_every_endpoint():
    shown = " ".join(readme_curl_commands())
    for path in ("/classify/image", "/classify ", "/sentiment", "/gan/generate", "/vae/sample", "/vae/reconstruct",
                 "/vae/interpolate ", "/vae/interpolate/images", "/infer/cnn", "/models", "/readyz", "/metrics"):
        assert f"localhost:3000{path}" in shown + " ", path


@pytest.mark.parametrize("command", readme_curl_commands())
def test_readme_curl_example_works(server, tmp_path, command):
    os.symlink(os.path.join(ROOT, "examples"), tmp_path / "examples")
    result = run_curl(server, command, tmp_path)
    assert result.returncode == 0, f"{command}\n{result.stderr}"
    output = re.search(r"-o (\S+)", command)
    if output:
        with open(tmp_path / output.group(1), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    else:
        assert result.stdout.strip()


def test_the_readme_admin_examples_work_in_order(live, versions, tmp_path):
    """The section's commands, in order, on the admin-enabled server with two versions of cnn."""
    import json
    import time

    from conftest import LIVE_ADMIN_KEY

    os.symlink(os.path.join(ROOT, "examples"), tmp_path / "examples")
    commands = readme_curl_commands("## Versions and live updates")
    assert any("/rollback" in c for c in commands) and any("canary" in c for c in commands)
    env = {"ADMIN": f"Authorization: Bearer {LIVE_ADMIN_KEY}", "V1": versions[0], "V2": versions[1]}
    outputs = []
    for command in commands:
        result = run_curl(live, command, tmp_path, env)
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        outputs.append(result.stdout)
        time.sleep(0.3)  # a shadow copy runs after its answer is sent
    assert json.loads(outputs[-1])["versions"][0]["role"] == "default"
