"""Plain text completion: fill the prompt, decode greedily (or sampled), return the text.

Arguments: prompt [max_tokens=32] [temperature=0] [seed=0]. Returns the generated token ids and
text as ``"<ids comma-separated>\\n<text>"`` so clients can check both, after sending one
message ``"ttft_s=<s> tpot_s=<s>"`` timed inside the inferlet (time to the first token, and
mean time per later token), which is what the overhead table compares with the bare engine.
"""

import time

from inferlet import Context, detokenize, send


def main(args):
    prompt = args[0] if args else "Hello"
    max_tokens = int(args[1]) if len(args) > 1 else 32
    temperature = float(args[2]) if len(args) > 2 else 0.0
    seed = int(args[3]) if len(args) > 3 else 0
    stamps = [time.perf_counter()]
    ctx = Context()
    ctx.fill(prompt)
    tokens = ctx.generate(max_tokens, temperature=temperature, seed=seed,
                          on_token=lambda i, tok: stamps.append(time.perf_counter()))
    ctx.release()
    ttft = stamps[1] - stamps[0] if len(stamps) > 1 else 0.0
    tpot = (stamps[-1] - stamps[1]) / (len(stamps) - 2) if len(stamps) > 2 else 0.0
    send(f"ttft_s={ttft:.6f} tpot_s={tpot:.6f}")
    return ",".join(str(t) for t in tokens) + "\n" + detokenize(tokens)
