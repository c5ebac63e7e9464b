"""The README's set-up commands: ``make test`` installs its browser, ``.ci/run`` is just
``make test``. The Makefile's recipes run here with fake system tools on PATH (apt-get, sudo,
id, env write what they were asked to a log), so nothing is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAKE = shutil.which("make")

LOGGING = 'echo "{name} $*" >> "{log}"\n'
TOOLS = {
    "apt-get": LOGGING + 'echo "  DEBIAN_FRONTEND=$DEBIAN_FRONTEND" >> "{log}"\n',
    "sudo": LOGGING + 'exec "$@"\n',
    # env VAR=value command...: export the assignments, run the command
    "env": 'while case "$1" in *=*) export "$1";; *) false;; esac; do shift; done\nexec "$@"\n',
    "chromium": "",
    "chromedriver": "",
}


def make_browser(tmp_path: Path, tools: list[str], uid: int = 0, **env: str):
    """``make browser`` with only ``tools`` (fakes) on PATH; returns (process, log lines)."""
    assert MAKE, "make is needed for the README's commands"
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir(parents=True)
    log.touch()
    for name in [*tools, "id"]:
        body = f"echo {uid}\n" if name == "id" else TOOLS[name].format(name=name, log=log)
        script = bin_dir / name
        script.write_text("#!/bin/sh\n" + body)
        script.chmod(0o755)
    done = subprocess.run(
        [MAKE, "-s", "-C", str(ROOT), "browser"],
        env={"PATH": str(bin_dir), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done, log.read_text().splitlines()


def test_make_test_installs_a_missing_browser_with_apt_as_root(tmp_path):
    done, log = make_browser(tmp_path, ["apt-get", "env"], uid=0)
    assert done.returncode == 0, done.stderr
    assert log == [
        "apt-get update -qq",
        "  DEBIAN_FRONTEND=",
        "apt-get install -y -qq chromium chromium-driver",
        "  DEBIAN_FRONTEND=noninteractive",
    ]


def test_a_user_installs_it_through_sudo(tmp_path):
    done, log = make_browser(tmp_path, ["apt-get", "env", "sudo"], uid=1000)
    assert done.returncode == 0, done.stderr
    assert log == [
        "sudo apt-get update -qq",
        "apt-get update -qq",
        "  DEBIAN_FRONTEND=",
        "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver",
        "apt-get install -y -qq chromium chromium-driver",
        "  DEBIAN_FRONTEND=noninteractive",
    ]


def test_a_browser_already_there_is_used(tmp_path):
    done, log = make_browser(tmp_path, ["apt-get", "env", "chromium", "chromedriver"])
    assert done.returncode == 0 and log == []


def test_without_apt_it_fails_with_the_fix_not_silently(tmp_path):
    done, log = make_browser(tmp_path, ["env"])
    assert done.returncode != 0 and log == []
    assert "chromium and chromedriver" in done.stderr
    assert "FEWCLIP_SKIP_BROWSER=1 make test" in done.stderr
    skipped, _ = make_browser(tmp_path / "again", ["env"], FEWCLIP_SKIP_BROWSER="1")
    assert skipped.returncode == 0 and "will be skipped" in skipped.stdout


def test_make_test_needs_the_browser_and_ci_just_calls_make_test():
    plan = subprocess.run(
        [MAKE, "-n", "-C", str(ROOT), "test", "STAMP=/dev/null"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "chromium-driver" in plan and "pytest" in plan
    assert plan.index("chromium-driver") < plan.index("pytest")
    assert "slurm-wlm" in plan and plan.index("slurm-wlm") < plan.index("pytest")
    lines = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[-1] == "exec make test" and not any("apt-get" in line for line in lines)


@pytest.mark.parametrize("name", ["chromium", "chromedriver"])
def test_the_browser_test_fails_rather_than_skips_without_a_browser(name):
    source = (ROOT / "tests" / "test_reports.py").read_text()
    assert "pytest.fail(" in source[source.index("def _chromium") :]
    assert f'shutil.which("{name}")' in source


# --------------------------------------------------------------------------- JupyterLab


def test_make_lab_registers_the_kernel_and_starts_jupyterlab_on_the_repo():
    plan = subprocess.run(
        [MAKE, "-n", "-C", str(ROOT), "lab", "STAMP=/dev/null"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    install = [
        i for i, line in enumerate(plan) if "ipykernel install --sys-prefix --name fewclip" in line
    ]
    lab = [i for i, line in enumerate(plan) if "jupyter lab" in line]
    assert install and lab and install[0] < lab[0]
    assert f"--ServerApp.root_dir={ROOT}" in plan[lab[0]] and "--allow-root" in plan[lab[0]]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_jupyterlab_serves_the_notebooks_with_the_fewclip_kernel_and_widgets(tmp_path):
    """A real JupyterLab server on the repository, with the kernel registered as ``make lab``
    does (into a temporary prefix): it offers the fewclip kernel running this interpreter,
    the notebooks ask for it, and the widgets extension is installed (ipywidgets render)."""
    import json
    import os
    import sys
    import time
    import urllib.request

    bin_dir = Path(sys.executable).parent
    prefix = tmp_path / "prefix"
    install = [sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix)]
    subprocess.run([*install, "--name", "fewclip"], check=True, capture_output=True)
    environ = {
        **os.environ,
        "JUPYTER_PATH": str(prefix / "share" / "jupyter"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
    }
    port, token = _free_port(), "fewclip-test"
    command = [str(bin_dir / "jupyter-lab"), "--no-browser", f"--port={port}"]
    command += [f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={ROOT}"]
    command += ["--allow-root"] if os.geteuid() == 0 else []  # as make lab does
    server = subprocess.Popen(
        command, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:

        def get(path: str) -> dict:
            url = f"http://127.0.0.1:{port}{path}?token={token}"
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.load(response)

        deadline = time.time() + 90
        while True:
            try:
                get("/api/status")
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                assert time.time() < deadline, "JupyterLab did not start within 90 s"
                time.sleep(0.5)
        specs = get("/api/kernelspecs")["kernelspecs"]
        assert specs["fewclip"]["spec"]["argv"][0] == sys.executable
        for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
            content = get(f"/api/contents/notebooks/{path.name}")["content"]
            assert content["metadata"]["kernelspec"]["name"] == "fewclip", path.name
        # the JupyterLab page loads the widgets extension (jupyterlab_widgets)
        url = f"http://127.0.0.1:{port}/lab?token={token}"
        with urllib.request.urlopen(url, timeout=30) as response:
            page = response.read().decode()
        assert "@jupyter-widgets/jupyterlab-manager" in page
    finally:
        server.terminate()
        server.wait(timeout=30)
