"""Plain text completion: fill the prompt, decode greedily (or sampled), return the text.

Arguments: prompt [max_tokens=32] [temperature=0] [seed=0]. Streams nothing; returns the
generated token ids and text as ``"<ids comma-separated>\\n<text>"`` so clients can check both.
"""

from inferlet import Context, detokenize


def main(args):
    prompt = args[0] if args else "Hello"
    max_tokens = int(args[1]) if len(args) > 1 else 32
    temperature = float(args[2]) if len(args) > 2 else 0.0
    seed = int(args[3]) if len(args) > 3 else 0
    ctx = Context()
    ctx.fill(prompt)
    tokens = ctx.generate(max_tokens, temperature=temperature, seed=seed)
    ctx.release()
    return ",".join(str(t) for t in tokens) + "\n" + detokenize(tokens)
