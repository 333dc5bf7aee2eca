"""Pie: A Programmable Serving System for Emerging LLM Applications (SOSP 2025), on ``core``.

The idea: instead of a fixed generate-text API, the server runs *inferlets*, small programs
compiled to WebAssembly, that drive generation through fine-grained handler calls: allocate and
free KV pages, embed tokens at chosen positions, run forward passes over chosen pages with
optional masks, read next-token distributions and sample, fork/copy/export/import KV pages,
tokenize, message the client and call host-granted tools. Applications such as agents, tree
search, beam search or speculative decoding become a few dozen lines that keep their KV on the
server and call tools without a client round trip. The runtime batches the handler calls of
all running inferlets into the engine's forward batches and sandboxes every inferlet.

Map of the package (one concept per file):

    wit/inferlet.wit   the host API, a versioned WIT world (``pie:inferlet@0.1.0``): the one definition
    wit.py             reads the WIT; checks the host implements exactly its functions
    host_api.py        the host functions (one per WIT function), registered on the wasmtime linker
    resources.py       per-inferlet address spaces for KV pages and embeds; exported pages
    batching.py        command queue + the single model thread; eager / k / t / adaptive policies
    instance.py        one running inferlet: store, sandbox limits, thread, result or error
    runtime.py         PieRuntime: engine, linker, compiled-component cache, launch/run
    server.py          loopback TCP server (JSON lines): launch by name or upload, stream messages
    client.py          the Python client
    build.py           ``python -m pie.build``: inferlet sources -> .wasm with componentize-py (cached)
    errors.py          why an inferlet failed (timeout, memory, trap, killed, failed) and resource errors
    sdk/inferlet/      the Python SDK compiled into every inferlet (Context, fork, generate, ...)
    inferlets/<name>/  example inferlets: text_completion, beam_search, speculative_decoding,
                       tree_of_thought, attention_sink, constrained_decoding, agent_react, sandbox_probe

Public API: :class:`PieRuntime`, :class:`RuntimeConfig`, :class:`BatchPolicy`, :class:`PieServer`,
:class:`PieClient`, and the errors in :mod:`pie.errors`.
"""

from pie.batching import BatchPolicy
from pie.client import PieClient
from pie.runtime import PieRuntime, RuntimeConfig
from pie.server import PieServer

__all__ = ["BatchPolicy", "PieClient", "PieRuntime", "PieServer", "RuntimeConfig"]
