"""A misbehaving inferlet, for the sandbox tests: arguments choose what it does wrong.

* ``loop``: compute forever without a host call (a runaway loop);
* ``oom``: allocate memory until the linear-memory limit stops it;
* ``steal <page>``: forward over a KV page id it never allocated (another inferlet's);
* ``leak <n>``: allocate ``n`` pages and never free them (the runtime must reclaim them);
* ``alloc_after <n>``: say "ready", wait for a message, then allocate ``n`` pages;
* ``wait``: block until the client sends a message, then echo it back;
* ``noop``: return at once (launch latency);
* ``calls <n>``: time ``n`` round trips of a cheap control call and of tokenize (per-call latency).
"""

import time

from inferlet import Context, get_arguments, model_info, receive, send, tokenize
from wit_world.imports import allocate, inference
from wit_world.imports.inference import ForwardPass


def main(args):
    what = args[0] if args else "loop"
    if what == "noop":
        return "ok"
    if what == "loop":
        n = 0
        while True:
            n += 1
    if what == "oom":
        hoard = []
        while True:
            hoard.append(bytearray(1 << 20))
    if what == "steal":
        (emb,) = allocate.alloc_embeds(1)
        inference.embed_tokens([emb], [1], [0])
        page = int(args[1])
        try:
            inference.forward([ForwardPass([page], 1, [emb], [], [], None)])
        except Exception as e:  # the host's err arrives as componentize_py_types.Err
            return "refused: " + str(getattr(e, "value", e))
        return "stole page " + str(page)
    if what == "leak":
        pages = allocate.alloc_kv_pages(int(args[1]))
        send("holding " + ",".join(str(p) for p in pages))
        receive()
        return "done"
    if what == "alloc_after":
        send("ready")
        receive()
        pages = allocate.alloc_kv_pages(int(args[1]))
        return "got " + str(len(pages))
    if what == "wait":
        send("ready")
        return "echo: " + receive()
    if what == "calls":
        n = int(args[1]) if len(args) > 1 else 200
        t0 = time.perf_counter()
        for _ in range(n):
            get_arguments()
        control = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for _ in range(n):
            tokenize("hello")
        tok = (time.perf_counter() - t0) / n
        ctx = Context()
        ctx.fill("hello")
        ctx.next_dist()
        t0 = time.perf_counter()
        for _ in range(n // 10 or 1):
            ctx.fill_tokens([1])
            ctx.next_dist()
        step = (time.perf_counter() - t0) / (n // 10 or 1)
        ctx.release()
        return f"control={control:.9f} tokenize={tok:.9f} decode_step={step:.9f} vocab={model_info().vocab_size}"
    return "unknown probe " + what
