"""``python -m symphony.run path/to/lip.py``: start a Symphony server, run one LIP, print what it says.

Examples::

    python -m symphony.run symphony/lips/json_decode.py --arg prompt="A person from Paris:"
    python -m symphony.run symphony/lips/chat.py --message "Hi!" --message "Tell me a joke" \\
        --kvfs-dir ~/.symphony/kvfs          # the chat's KV file persists for the next run
    python -m symphony.run symphony/lips/chat.py --interactive

Messages the LIP sends are printed one JSON line each (``{"pid", "message"}``), then its result
(``{"pid", "state", "result"}``); a LIP that fails prints its traceback and exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from symphony.kernel import Symphony, SymphonyConfig
from symphony.process import LIPBudget, ProcessState


def _parse_arg(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise argparse.ArgumentTypeError(f"--arg takes key=value, got {item!r}")
    key, raw = item.split("=", 1)
    try:
        return key, json.loads(raw)  # numbers, lists, objects, true/false
    except json.JSONDecodeError:
        return key, raw


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m symphony.run",
        description="Run an LLM inference program (LIP: a .py file with `async def main(lip)`) on a Symphony server.",
    )
    p.add_argument("lip", type=Path, help="path of the LIP file")
    p.add_argument(
        "--arg",
        action="append",
        default=[],
        type=_parse_arg,
        metavar="KEY=VALUE",
        help="an argument for the LIP (lip.args); VALUE is parsed as JSON when it can be",
    )
    p.add_argument(
        "--message",
        action="append",
        default=[],
        metavar="TEXT",
        help="a client message for the LIP's receive(); repeat for several turns",
    )
    p.add_argument("--interactive", action="store_true", help="read client messages from stdin, one per line")
    p.add_argument("--user", default="guest", help="the user the LIP runs as (owner of its files)")
    p.add_argument(
        "--model",
        default="gemma3-270m",
        help="'gemma3-270m' (embedded default), a Hugging Face checkpoint folder, or a .gguf file",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--kvfs-dir", type=Path, help="load the KV file system from here and save it back at exit")
    p.add_argument("--num-pages", type=int, default=1024, help="KV pages in the pool")
    p.add_argument("--page-size", type=int, default=16, help="tokens per KV page")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-batch-tokens", type=int, default=512)
    p.add_argument("--slice-s", type=float, default=5.0, help="time a LIP may run between blocking syscalls")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from core.loader import load_model  # heavy; after --help

    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    config = SymphonyConfig(
        num_pages=args.num_pages,
        page_size=args.page_size,
        max_batch_size=args.max_batch_size,
        max_batch_tokens=args.max_batch_tokens,
        budget=LIPBudget(max_slice_s=args.slice_s),
    )
    server = Symphony(loaded.model, loaded.tokenizer, config, model_id=args.model)
    try:
        if args.kvfs_dir is not None:
            server.kvfs.load_tree(args.kvfs_dir)
        pid = server.submit(args.lip, dict(args.arg), user=args.user)
        messages, closed = list(args.message), False
        server.run()
        _flush(server, pid)
        while server.process(pid).alive:
            if closed:
                server.kill(pid, "the LIP kept waiting for messages after the client closed the conversation")
                break
            if messages:
                msg = messages.pop(0)
            elif args.interactive:
                line = sys.stdin.readline()
                msg = line.rstrip("\n") if line else None
            else:
                msg = None
            closed = msg is None  # None ends the conversation
            server.send(pid, msg)
            server.run()
            _flush(server, pid)
        proc = server.process(pid)
        print(json.dumps({"pid": pid, "state": proc.state.value, "result": proc.result}, default=repr))
        if proc.state is ProcessState.FAILED:
            print(proc.error_text, file=sys.stderr)
            return 1
        if args.kvfs_dir is not None:
            server.kvfs.save_tree(args.kvfs_dir)
        return 0
    finally:
        server.close()


def _flush(server: Symphony, pid: int) -> None:
    for message in server.receive(pid):
        print(json.dumps({"pid": pid, "message": message}, default=repr), flush=True)


if __name__ == "__main__":
    sys.exit(main())
