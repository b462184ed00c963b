"""``maskrcnn-tfx serve`` as a process: a client started before it retries until it answers, it listens on
127.0.0.1 only, and SIGTERM stops it cleanly."""
import logging
import os
import signal
import subprocess
import sys
import threading

import portpicker
import pytest

from maskrcnn_tfx.testing import models as served
from maskrcnn_tfx.serving import client as client_lib

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _listening_addresses(port):
    """Local addresses of the sockets listening on ``port`` (from /proc/net/tcp and tcp6)."""
    addresses = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table, encoding="ascii") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                address, port_hex = fields[1].rsplit(":", 1)
                if int(port_hex, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                    addresses.append(address)
    return addresses


def test_serve_command_late_start_retries_loopback_only_and_sigterm(tmp_path, caplog):
    base = str(tmp_path / "base")
    served.push(served.exported_model_dir(), base, 7)
    rest_port, grpc_port = portpicker.pick_unused_port(), portpicker.pick_unused_port()
    answers, errors = {}, []
    patient = client_lib.RetryPolicy(max_attempts=80, initial_backoff=0.5, max_backoff=4.0)

    def ask(name, make):
        try:
            with make() as client:
                answers[name] = client.predict(served.sample_images()[:1])
        except Exception as e:  # pylint: disable=broad-except
            errors.append(f"{name}: {e!r}")

    clients = [
        threading.Thread(target=ask, args=("rest", lambda: client_lib.connect(
            f"http://127.0.0.1:{rest_port}", model_name=served.MODEL_NAME, retry=patient, timeout=120))),
        threading.Thread(target=ask, args=("grpc", lambda: client_lib.connect(
            f"127.0.0.1:{grpc_port}", use_grpc=True, model_name=served.MODEL_NAME, retry=patient, timeout=120))),
    ]
    caplog.set_level(logging.WARNING, logger="maskrcnn_tfx.serving.client")
    # The clients start first: nothing listens yet, and the server's start (TensorFlow, loading the model)
    # takes a while.
    for t in clients:
        t.start()
    server = subprocess.Popen(
        [sys.executable, "-m", "maskrcnn_tfx.cli", "serve", "--model-base-path", base, "--model-name",
         served.MODEL_NAME, "--rest-port", str(rest_port), "--grpc-port", str(grpc_port)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for t in clients:
            t.join(timeout=600)
        assert errors == []
        assert set(answers) == {"rest", "grpc"}
        assert answers["rest"]["num_detections"].tolist() == answers["grpc"]["num_detections"].tolist()
        assert "retrying" in caplog.text  # they were refused before the server was up
        for port in (rest_port, grpc_port):
            listening = _listening_addresses(port)
            # 127.0.0.1 as IPv4 (little-endian) or IPv4-mapped IPv6 (gRPC's socket); nothing on 0.0.0.0, ::
            # or another interface.
            assert listening and set(listening) <= {"0100007F", "0000000000000000FFFF00000100007F"}, listening
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=120)
        assert server.returncode == 0, output
        assert "Stopped" in output
        assert _listening_addresses(rest_port) == [] and _listening_addresses(grpc_port) == []
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
