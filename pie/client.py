"""A Python client for :class:`pie.server.PieServer` (blocking, one socket, a reader thread).

    with PieClient("127.0.0.1", port) as client:
        job = client.launch("text_completion", ["Once upon a time", "32"])
        for message in job.messages():
            print(message)
        print(job.result())
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import queue
import socket
import threading
from collections.abc import Iterator

from pie.errors import PieError


class RemoteInferletError(PieError):
    """The inferlet ended with an error on the server; ``kind`` is timeout/memory/trap/failed/killed."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class RequestRejected(PieError):
    """The server refused a request (unknown inferlet, tool not offered, bad arguments)."""


class RemoteInferlet:
    def __init__(self, client: PieClient, inferlet_id: int):
        self.client, self.id = client, inferlet_id
        self._events: queue.Queue[dict] = queue.Queue()
        self._end: dict | None = None
        self.stats: dict = {}

    def recv(self, timeout: float | None = None) -> str | None:
        """The next message the inferlet sent, or None once it has ended."""
        if self._end is not None:
            return None
        event = self._events.get(timeout=timeout)
        if event["event"] == "message":
            return event["data"]
        self._end = event
        self.stats = event.get("stats", {})
        return None

    def messages(self, timeout: float | None = None) -> Iterator[str]:
        while (m := self.recv(timeout)) is not None:
            yield m

    def result(self, timeout: float | None = None) -> str:
        """Wait for the end (skipping unread messages); raise :class:`RemoteInferletError` on failure."""
        while self._end is None:
            self.recv(timeout)
        if self._end["event"] == "error":
            raise RemoteInferletError(self._end["kind"], self._end["message"])
        return self._end["result"]

    def send(self, data: str) -> None:
        self.client._request({"op": "send", "id": self.id, "data": data})

    def terminate(self) -> None:
        self.client._request({"op": "terminate", "id": self.id})


class PieClient:
    def __init__(self, host: str, port: int, timeout: float = 60.0):
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._sock.settimeout(None)
        self._file = self._sock.makefile("rb")
        self._timeout = timeout
        self._req = itertools.count(1)
        self._replies: dict[int, queue.Queue[dict]] = {}
        self._inferlets: dict[int, RemoteInferlet] = {}
        self._early: dict[int, list[dict]] = {}  # events that beat the "launched" reply
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="pie-client", daemon=True)
        self._reader.start()

    def launch(self, name: str, args: list | tuple = (), tools: list | tuple = ()) -> RemoteInferlet:
        reply = self._request({"op": "launch", "name": name, "args": [str(a) for a in args], "tools": list(tools)})
        job = RemoteInferlet(self, reply["id"])
        with self._lock:
            self._inferlets[job.id] = job
            for event in self._early.pop(job.id, []):
                job._events.put(event)
        return job

    def run(self, name: str, args: list | tuple = (), tools: list | tuple = (), timeout: float | None = None) -> str:
        return self.launch(name, args, tools).result(timeout)

    def upload(self, name: str, wasm: bytes) -> dict:
        return self._request({"op": "upload", "name": name, "wasm": base64.b64encode(wasm).decode()})

    def list(self) -> dict:
        return self._request({"op": "list"})

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def __enter__(self) -> PieClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------
    def _request(self, req: dict) -> dict:
        req["req"] = n = next(self._req)
        box: queue.Queue[dict] = queue.Queue()
        with self._lock:
            self._replies[n] = box
        self._sock.sendall((json.dumps(req) + "\n").encode())
        reply = box.get(timeout=self._timeout)
        if reply["event"] == "rejected":
            raise RequestRejected(reply["message"])
        return reply

    def _read(self) -> None:
        with contextlib.suppress(OSError, ValueError):  # the connection closed: nothing more will come
            self._read_lines()

    def _read_lines(self) -> None:
        for line in self._file:
            event = json.loads(line)
            with self._lock:
                if event.get("req") is not None and event["req"] in self._replies:
                    self._replies.pop(event["req"]).put(event)
                elif "id" in event:
                    job = self._inferlets.get(event["id"])
                    if job is None:
                        self._early.setdefault(event["id"], []).append(event)
                    else:
                        job._events.put(event)
