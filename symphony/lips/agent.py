"""An agent whose tools run on the server: no client round trip, no re-encoding of the context.

Each of ``steps`` rounds: the model thinks for up to ``think_tokens`` tokens, the LIP issues a tool
call (parsed from the model's text when it wrote ``lookup(<key>)``, else the next planned one),
runs it with ``call_tool`` on a server worker thread (the LIP is blocked meanwhile, other LIPs
keep the model busy), and appends the observation to its KV file in place. A final answer of up
to ``answer_tokens`` tokens closes the episode.

Args: ``question`` (text), ``steps`` (2), ``think_tokens`` (16), ``answer_tokens`` (16),
``plan`` (list of tool keys to call when the model names none), ``tool_latency_s`` (simulated
tool I/O, 0.05). Returns ``{"answer", "calls"}``.
"""

import re
import time

from symphony.lib import Context

FACTS = {
    "capital_of_france": "Paris",
    "boiling_point_c": "100",
    "speed_of_light_kms": "299792",
    "tallest_mountain": "Everest",
    "largest_planet": "Jupiter",
}
TOOL_DOC = (
    "You can call lookup(key) to read a fact. Keys: " + ", ".join(FACTS) + ".\n"
    "Write 'Action: lookup(key)' to call it; the result follows as 'Observation:'.\n"
)


def lookup(key: str, latency_s: float = 0.05) -> str:
    """The tool: a slow key-value lookup (stands in for a web or database call)."""
    time.sleep(latency_s)
    return FACTS.get(key.strip(), f"unknown key {key!r}")


def parse_call(text: str) -> str | None:
    m = re.search(r"lookup\(\s*['\"]?([a-z_]+)['\"]?\s*\)", text)
    return m.group(1) if m else None


async def main(lip):
    question = lip.args.get("question", "What is the capital of France?")
    steps = int(lip.args.get("steps", 2))
    think, answer_tokens = int(lip.args.get("think_tokens", 16)), int(lip.args.get("answer_tokens", 16))
    plan = list(lip.args.get("plan", list(FACTS)))
    latency = float(lip.args.get("tool_latency_s", 0.05))
    fd = lip.create(f"{lip.home}/agent-{lip.pid}")
    ctx = Context(lip, fd)
    ctx.fill([lip.bos_token_id] if lip.bos_token_id is not None else [])
    ctx.fill_text(TOOL_DOC + f"Question: {question}\nThought:")
    calls = []
    newline = lip.tokenize("\n")
    for i in range(steps):
        thought = await ctx.generate(think, stop_token_ids=[*lip.eos_token_ids, *newline])
        key = parse_call(lip.detokenize(thought)) or plan[i % len(plan)]
        observation = await lip.call_tool(lookup, key, latency)
        calls.append({"key": key, "observation": observation})
        ctx.fill_text(f"\nAction: lookup({key})\nObservation: {observation}\nThought:")
    ctx.fill_text("\nAnswer:")
    answer = await ctx.generate(answer_tokens)
    lip.unlink(f"{lip.home}/agent-{lip.pid}")
    return {"answer": lip.detokenize(answer), "calls": calls}
