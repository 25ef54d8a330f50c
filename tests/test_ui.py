"""`dagster dev` serves the UI; its GraphQL endpoint lists every asset of the definitions."""

import os
import socket
import subprocess
import sys
import time

import pytest
import requests

from pipelines.definitions import defs

QUERY = "{ assetNodes { assetKey { path } groupName description } }"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dagster_dev(tmp_path):
    port = _free_port()
    env = dict(
        os.environ, DAGSTER_HOME=str(tmp_path / "dagster_home"), MALLES_DATA_DIR=str(tmp_path / "data")
    )
    os.makedirs(env["DAGSTER_HOME"])
    with open(os.path.join(env["DAGSTER_HOME"], "dagster.yaml"), "w") as f:
        f.write("telemetry:\n  enabled: false\n")
    dagster_bin = os.path.join(os.path.dirname(sys.executable), "dagster")
    proc = subprocess.Popen(
        [dagster_bin, "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/graphql"
    try:
        # dagster dev starts a code server and a webserver: up to minutes on a loaded 2-core machine
        deadline, ready = time.time() + 300, False
        while time.time() < deadline and not ready:
            try:
                r = requests.post(url, json={"query": QUERY}, timeout=5)
                ready = bool(r.ok and r.json().get("data", {}).get("assetNodes"))
            except requests.RequestException:
                pass
            assert proc.poll() is None, "dagster dev exited early"
            time.sleep(0 if ready else 1)
        assert ready, "dagster dev served no asset nodes within 300 s"
        yield url
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


def test_graphql_lists_every_asset(dagster_dev):
    r = requests.post(dagster_dev, json={"query": QUERY}, timeout=30)
    r.raise_for_status()
    nodes = r.json()["data"]["assetNodes"]
    served = {"/".join(n["assetKey"]["path"]) for n in nodes}
    expected = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert expected and served == expected
    assert all(n["groupName"] and n["description"] for n in nodes)
