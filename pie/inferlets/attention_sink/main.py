"""Windowed attention with attention sinks (StreamingLLM-style) by freeing KV pages.

Arguments: prompt [max_tokens=64] [sink_pages=1] [window_pages=2]. After every step the
context keeps its first ``sink_pages`` pages and its last ``window_pages`` full pages (plus the
partly filled one) and frees the pages in between, so KV memory stays bounded however long it
generates. Tokens keep their original positions. Returns the ids, the text and the largest
number of pages held.
"""

from inferlet import Context, detokenize, model_info


def main(args):
    prompt = args[0] if args else "Hello"
    max_tokens = int(args[1]) if len(args) > 1 else 64
    sink_pages = int(args[2]) if len(args) > 2 else 1
    window_pages = int(args[3]) if len(args) > 3 else 2
    eos = set(model_info().eos_token_ids)
    ctx = Context()
    ctx.fill(prompt)
    out, peak = [], 0
    for _ in range(max_tokens):
        tok = ctx.next_dist().ids[0]
        out.append(tok)
        peak = max(peak, len(ctx.pages))
        if tok in eos:
            break
        ctx.fill_tokens([tok])
        ctx.drop_middle(sink_pages, window_pages)
    ctx.release()
    return ",".join(str(t) for t in out) + "\n" + detokenize(out) + f"\npeak_pages={peak}"
