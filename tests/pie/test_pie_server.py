"""The server and client over loopback TCP: launch, stream, send, terminate, upload, refuse."""

import pytest

from pie import build
from pie.client import PieClient, RemoteInferletError, RequestRejected
from pie.server import PieServer


@pytest.fixture(scope="module")
def server(runtime):
    srv = PieServer(runtime, tools={"search": lambda q: f"result for {q}"})
    host, port = srv.start()
    yield host, port
    srv.stop()


def test_launch_by_name_returns_engine_greedy_tokens(server, greedy, ids):
    with PieClient(*server) as client:
        assert ids(client.run("text_completion", ["Loopback", "8"], timeout=300)) == greedy("Loopback", 8)


def test_messages_stream_and_client_messages_arrive(server):
    with PieClient(*server) as client:
        job = client.launch("sandbox_probe", ["wait"])
        assert job.recv(timeout=300) == "ready"
        job.send("hi")
        assert job.result(timeout=120) == "echo: hi"


def test_agent_gets_a_server_tool_and_streams_its_turns(server):
    with PieClient(*server) as client:
        job = client.launch("agent_react", ["Q?", "2", "4"], tools=["search"])
        messages = list(job.messages(timeout=300))
        assert [m.split(":")[0] for m in messages] == ["turn 0", "turn 1"]
        job.result()
        assert job.stats["calls"] > 0


def test_terminate_and_errors_reach_the_client(server):
    with PieClient(*server) as client:
        job = client.launch("sandbox_probe", ["wait"])
        job.recv(timeout=300)
        job.terminate()
        with pytest.raises(RemoteInferletError) as info:
            job.result(timeout=60)
        assert info.value.kind == "killed"
        with pytest.raises(RequestRejected, match="no inferlet source"):
            client.launch("no_such_inferlet")
        with pytest.raises(RequestRejected, match="not offered"):
            client.launch("agent_react", tools=["rm_rf"])


def test_uploaded_component_runs_under_its_new_name(server, ids):
    wasm = build.build("text_completion").read_bytes()
    with PieClient(*server) as client:
        assert client.upload("my_completion", wasm)["bytes"] == len(wasm)
        assert "my_completion" in client.list()["loaded"]
        assert ids(client.run("my_completion", ["Up", "4"], timeout=300)) == ids(
            client.run("text_completion", ["Up", "4"], timeout=300)
        )
