"""Node's amqplib (compat/node: promise and callback APIs, ConfirmChannel,
update-secret), run with Node's built-in test runner against the broker
under test. scripts/test-all.sh installs node and the locked packages
(`npm ci`); elsewhere the test skips when they are missing."""

import os
import pathlib
import re
import shutil
import subprocess

import pytest

NODE_DIR = pathlib.Path(__file__).resolve().parent / "node"


@pytest.mark.timeout(120)
def test_amqplib_suite(broker):
    node = shutil.which("node")
    installed = (NODE_DIR / "node_modules" / "amqplib").is_dir()
    if node is None or not installed:
        why = "node is not installed" if node is None else "run `npm ci` in compat/node"
        if os.environ.get("HOPPER_REQUIRE_NODE"):
            pytest.fail(f"amqplib tests cannot run: {why}")
        pytest.skip(f"amqplib tests cannot run: {why} (scripts/test-all.sh does both)")
    files = sorted(str(p.relative_to(NODE_DIR)) for p in (NODE_DIR / "test").glob("*.test.js"))
    assert files, "no amqplib tests found"
    proc = subprocess.run(
        [node, "--test", "--test-reporter=tap", *files],
        cwd=NODE_DIR,
        env=dict(os.environ, AMQP_URL=broker.url()),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=110,
    )
    out = proc.stdout + proc.stderr
    counts = dict(re.findall(r"^# (tests|pass|fail|cancelled) (\d+)$", out, re.M))
    print(f"amqplib: {counts}")
    assert proc.returncode == 0 and counts.get("fail") == "0", out[-6000:]
    assert int(counts.get("pass", 0)) == int(counts.get("tests", -1)) > 0, out[-6000:]
