"""Shared fixtures.

`azurite`: Azurite's Table service (the npm devDependency in package.json), started once per
test session on a free loopback port with in-memory persistence, and stopped by its process id
at the end. If node or npm is missing the fixture fails with a clear error: a Table Storage
test that silently skips would hide a broken environment.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
AZURITE_TABLE = ROOT / "node_modules" / ".bin" / "azurite-table"
# Azurite's well-known development account (public, documented, not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def _ensure_azurite_installed() -> Path:
    if AZURITE_TABLE.exists():
        return AZURITE_TABLE
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        pytest.fail(
            "Azurite is needed for the Table Storage tests but node/npm are not installed; "
            "install Node.js (20+) and run `npm ci` in the project root",
            pytrace=False,
        )
    command = [npm, "ci" if (ROOT / "package-lock.json").exists() else "install"]
    result = subprocess.run(
        [*command, "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0 or not AZURITE_TABLE.exists():
        pytest.fail(
            f"`{' '.join(command)}` did not install Azurite (exit {result.returncode}):\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}",
            pytrace=False,
        )
    return AZURITE_TABLE


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture(scope="session")
def azurite() -> Iterator[str]:
    """A connection string for a fresh, in-memory Azurite Table service."""
    executable = _ensure_azurite_installed()
    workspace = Path(tempfile.mkdtemp(prefix="azurite-"))
    log_path = workspace / "azurite.log"
    for _attempt in range(3):  # the free port can be taken between probing and binding
        port = _free_port()
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [
                    str(executable),
                    "--tableHost",
                    "127.0.0.1",
                    "--tablePort",
                    str(port),
                    "--inMemoryPersistence",
                    "--disableTelemetry",
                    "--skipApiVersionCheck",
                    "--loose",
                    "--silent",
                ],
                cwd=workspace,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if k != "AZURITE_ACCOUNTS"},
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None and not _answers(port):
            time.sleep(0.1)
        if process.poll() is None and _answers(port):
            break
        _stop(process)
    else:
        output = log_path.read_text(errors="replace")[-4000:]
        status = (
            f"exited with code {process.returncode}"
            if process.returncode is not None
            else f"did not answer within {START_TIMEOUT_S:.0f} s"
        )
        shutil.rmtree(workspace, ignore_errors=True)
        pytest.fail(f"Azurite's Table service ({executable}) {status}:\n{output}", pytrace=False)
    try:
        yield (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};"
            f"TableEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
        )
    finally:
        _stop(process)
        shutil.rmtree(workspace, ignore_errors=True)
