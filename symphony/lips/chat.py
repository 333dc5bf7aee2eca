"""Multi-turn chat that keeps its KV file: each turn appends only the new message.

Args: ``file`` (KV file path, default ``<home>/chat``), ``max_new_tokens`` (per reply, 32),
``system`` (system prompt text, used when the file is new), ``shared_prefix`` (optional path of a
read-only KV file, e.g. a shared system prompt, to fork from when the file is new).

Messages: each client message is a user turn (``str``); ``None`` ends the session. Each reply is
sent back as ``{"text", "tokens"}``. The file survives the LIP, so a later run continues the same chat.
"""

from symphony.lib import Context

TURN = "<start_of_turn>{role}\n{content}<end_of_turn>\n"


async def main(lip):
    path = lip.args.get("file") or f"{lip.home}/chat"
    max_new = int(lip.args.get("max_new_tokens", 32))
    pending = []
    if lip.exists(path):
        fd = lip.open(path, "rw")
    elif lip.args.get("shared_prefix"):
        shared = lip.open(lip.args["shared_prefix"], "r")
        fd = lip.fork(shared, path)
        lip.close(shared)
    else:
        fd = lip.create(path)
        pending = [lip.bos_token_id] if lip.bos_token_id is not None else []
        if lip.args.get("system"):
            pending += lip.tokenize(TURN.format(role="user", content=lip.args["system"]))
    ctx = Context(lip, fd)
    ctx.fill(pending)
    turns = 0
    while True:
        message = await lip.receive()
        if message is None:
            break
        ctx.fill_text(TURN.format(role="user", content=message) + "<start_of_turn>model\n")
        reply = await ctx.generate(max_new)
        lip.send({"text": lip.detokenize(reply), "tokens": reply})
        if reply and reply[-1] not in lip.eos_token_ids:
            ctx.fill_text("<end_of_turn>")
        ctx.fill_text("\n")  # close the model's turn; appended with the next message
        turns += 1
    await ctx.flush()  # keep the file complete for the next run
    return {"turns": turns, "file": path, "length": lip.stat(fd).length}
