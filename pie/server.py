"""A Pie server: launch inferlets by name or upload, pass arguments, stream messages back.

Transport: newline-delimited JSON over TCP (asyncio, standard library only). Requests carry a
client-chosen ``req`` number that the reply repeats; events about an inferlet carry its ``id``.

=====================================================  =========================================
request                                                reply / events
=====================================================  =========================================
``{"op": "launch", "name", "args": [...],``            ``{"event": "launched", "id"}``, then
``"tools": [...]}``                                    ``message`` events and one ``finished``
                                                       (``result``) or ``error`` (``kind``,
                                                       ``message``) event
``{"op": "send", "id", "data"}``                       ``{"event": "ok"}`` (the inferlet's
                                                       ``receive`` returns ``data``)
``{"op": "terminate", "id"}``                          ``{"event": "ok"}``
``{"op": "upload", "name", "wasm": base64}``           ``{"event": "uploaded", "name", "bytes"}``
``{"op": "list"}``                                     ``{"event": "programs", "built", "loaded"}``
=====================================================  =========================================

Tools are granted by the server operator (``PieServer(tools={...})``); a launch asks for some of
them by name and gets only those the server has.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
from collections.abc import Callable

from pie.errors import InferletTerminated, PieError
from pie.runtime import PieRuntime

# One request per line; an uploaded component travels base64-encoded in one line (~25 MB).
_MAX_LINE = 256 << 20


class PieServer:
    def __init__(self, runtime: PieRuntime, host: str = "127.0.0.1", port: int = 0,
                 tools: dict[str, Callable[[str], str]] | None = None):
        self.runtime, self.host, self.port = runtime, host, port
        self.tools = dict(tools or {})
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._tasks: set[asyncio.Task] = set()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> tuple[str, int]:
        """Serve on a background thread; return the bound (host, port)."""
        self._thread = threading.Thread(target=self._serve_forever, name="pie-server", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self.host, self.port

    def _serve_forever(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, self.host, self.port, limit=_MAX_LINE))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        if self._loop is None:
            return

        async def _close() -> None:
            self._server.close()
            await self._server.wait_closed()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    # -- connection ------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lock = asyncio.Lock()
        mine: dict[int, object] = {}  # inferlets launched on this connection

        async def emit(event: dict) -> None:
            async with lock:
                writer.write((json.dumps(event) + "\n").encode())
                await writer.drain()

        try:
            while line := await reader.readline():
                try:
                    req = json.loads(line)
                    reply = await self._dispatch(req, emit, mine)
                except (PieError, KeyError, ValueError, TypeError) as e:
                    reply = {"event": "rejected", "message": f"{type(e).__name__}: {e}"}
                    req = req if isinstance(req, dict) else {}
                reply["req"] = req.get("req")
                await emit(reply)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            for inf in mine.values():  # a client that goes away takes its inferlets with it
                inf.kill("the client disconnected")
            writer.close()

    async def _dispatch(self, req: dict, emit, mine: dict) -> dict:
        op = req["op"]
        if op == "launch":
            return await self._launch(req, emit, mine)
        if op == "send":
            mine[int(req["id"])].send(str(req["data"]))
            return {"event": "ok"}
        if op == "terminate":
            mine[int(req["id"])].kill("terminated by the client")
            return {"event": "ok"}
        if op == "upload":
            data = base64.b64decode(req["wasm"])
            await asyncio.to_thread(self.runtime.upload, req["name"], data)
            return {"event": "uploaded", "name": req["name"], "bytes": len(data)}
        if op == "list":
            from pie import build

            return {"event": "programs", "built": build.list_inferlets(), "loaded": sorted(self.runtime.programs)}
        raise ValueError(f"unknown op {op!r}")

    async def _launch(self, req: dict, emit, mine: dict) -> dict:
        loop = asyncio.get_running_loop()
        asked = list(req.get("tools", []))
        missing = [t for t in asked if t not in self.tools]
        if missing:
            raise ValueError(f"tools {missing} are not offered by this server (offered: {sorted(self.tools)})")

        def on_message(inf, data: str) -> None:  # inferlet thread -> event loop
            asyncio.run_coroutine_threadsafe(emit({"event": "message", "id": inf.id, "data": data}), loop)

        inf = await asyncio.to_thread(
            self.runtime.launch, req["name"], [str(a) for a in req.get("args", [])],
            {t: self.tools[t] for t in asked}, on_message,
        )
        mine[inf.id] = inf

        async def watch() -> None:
            try:
                result = await asyncio.to_thread(inf.wait)
                event = {"event": "finished", "id": inf.id, "result": result}
            except InferletTerminated as e:
                event = {"event": "error", "id": inf.id, "kind": e.kind, "message": str(e)}
            event["stats"] = {"calls": inf.stats.total_calls, "launch_s": inf.stats.launch_s, "run_s": inf.stats.run_s}
            mine.pop(inf.id, None)
            with contextlib.suppress(ConnectionError):
                await emit(event)

        task = loop.create_task(watch())
        self._tasks.add(task)  # keep a reference until done (the loop holds tasks weakly)
        task.add_done_callback(self._tasks.discard)
        return {"event": "launched", "id": inf.id}
