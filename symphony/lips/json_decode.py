"""Decoding constrained to a JSON object with given fields: the output always parses.

The LIP writes the JSON structure itself (braces, keys, quotes, commas are appended as forced
tokens, with no sampling and no per-token round trip) and lets the model choose only the values,
each step restricted to the tokens valid there: digit tokens for ``int`` fields (no leading zero)
or the separator that ends the number, quote-free printable tokens or the closing quote for
``str`` fields. Prompt serving cannot do
this: it can only ask for JSON and hope.

Args: ``prompt`` (text), ``fields`` (mapping name -> "str" | "int", default name/age/city),
``max_value_tokens`` (8). Returns ``{"text", "value"}``.
"""

import json

from symphony.lib import Context

DEFAULT_FIELDS = {"name": "str", "age": "int", "city": "str"}


def token_classes(vocab):
    """Token ids by role: digits, leading digits (1-9...), string-safe, and the bare closing quote."""
    digits, lead, safe, quote = [], [], [], []
    for i, t in enumerate(vocab):
        if not t or "\ufffd" in t:
            continue
        if t.isascii() and t.isdigit():
            digits.append(i)
            if t[0] != "0":
                lead.append(i)
        if t == '"':
            quote.append(i)
        elif '"' not in t and "\\" not in t and all(ord(c) >= 0x20 for c in t) and t.isprintable():
            safe.append(i)
    return digits, lead, safe, quote


async def main(lip):
    fields = dict(lip.args.get("fields", DEFAULT_FIELDS))
    max_value = int(lip.args.get("max_value_tokens", 8))
    prompt = lip.args.get("prompt", "Describe a person as JSON.")
    vocab = lip.vocab()
    digits, lead, safe, quote = token_classes(vocab)
    if not (digits and lead and safe and quote):
        raise RuntimeError("the vocabulary lacks digit, text or quote tokens; cannot constrain JSON")
    ends = {sep: [i for i, t in enumerate(vocab) if t == sep] for sep in (",", "}")}
    fd = lip.create(f"{lip.home}/json-{lip.pid}")
    ctx = Context(lip, fd)
    ctx.fill(([lip.bos_token_id] if lip.bos_token_id is not None else []) + lip.tokenize(prompt + "\n"))
    text, separator_written = "{", False
    for n, (name, kind) in enumerate(fields.items()):
        last = n == len(fields) - 1
        sep = "" if n == 0 else (" " if separator_written else ", ")
        opener = sep + json.dumps(name) + ": " + ('"' if kind == "str" else "")
        text += opener
        ctx.fill_text(("{" if n == 0 else "") + opener)
        value, separator_written = [], False
        # An int ends when the model writes the separator that follows it (or at max_value tokens).
        int_end = ends["}" if last else ","]
        for step in range(max_value):
            if kind == "int":
                allowed = lead if step == 0 else digits + int_end
            else:
                allowed = safe + (quote if step > 0 else [])
            token = lip.sample(await ctx.next_dist(), allowed=allowed)
            ctx.pending = [token]  # every chosen token is part of the file
            if token in quote:  # the string closed itself
                break
            if kind == "int" and token in int_end:
                separator_written = True
                break
            value.append(token)
        text += lip.detokenize(value) + ('"' if kind == "str" else "")
        if separator_written and not last:
            text += ","  # the model's own separator token, already in the file
        if kind == "str" and ctx.pending[-1] not in quote:
            ctx.fill_text('"')
    text += "}"
    if not separator_written:
        ctx.fill_text("}")
    await ctx.flush()
    lip.unlink(f"{lip.home}/json-{lip.pid}")
    return {"text": text, "value": json.loads(text)}
