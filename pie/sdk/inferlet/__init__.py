"""The Pie inferlet SDK for Python: what an inferlet's ``main.py`` imports.

Runs *inside* the WebAssembly component (CPython built by componentize-py), on top of the
bindings generated from ``pie/wit/inferlet.wit``. Files:

* ``runtime.py``: arguments, messages to and from the client, host-granted tools, the store;
* ``context.py``: :class:`Context`, a token sequence over KV pages the inferlet owns, with
  ``fill``, ``fork``, ``next_dist``, ``generate``, ``truncate``, ``export``/``import_``, and
  :func:`next_dists`, which runs many contexts' passes in one host call (one batch);
* ``sampling.py``: choosing a token from a top-k distribution;
* ``_entry.py``: turns ``main(args)`` into the world's exported ``run``.
"""

from inferlet.context import Context, Distribution, next_dists
from inferlet.runtime import (
    call_tool,
    detokenize,
    get_arguments,
    model_info,
    receive,
    send,
    store_get,
    store_set,
    tokenize,
)
from inferlet.sampling import sample

__all__ = [
    "Context",
    "Distribution",
    "call_tool",
    "detokenize",
    "get_arguments",
    "model_info",
    "next_dists",
    "receive",
    "sample",
    "send",
    "store_get",
    "store_set",
    "tokenize",
]
