"""Generate a completion from the command line and print it with its timings.

    python -m core.generate --prompt "The capital of France is" --max-new-tokens 32
"""

from __future__ import annotations

import argparse
import sys

import torch

from core.config import EngineConfig
from core.engine import Engine
from core.loader import DEFAULT_MODEL, load_model
from core.sampling import SamplingParams


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m core.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", required=True, help="prompt text")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"'{DEFAULT_MODEL}' (embedded GGUF), a Hugging Face folder, or a .gguf file")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate at most")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.add_argument("--page-size", type=int, default=16, help="KV page size in tokens")
    p.add_argument("--num-pages", type=int, default=1024, help="KV pool size in pages")
    p.add_argument("--attention-backend", choices=["auto", "torch", "triton"], default="auto")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    engine = Engine(loaded.model, loaded.tokenizer, EngineConfig(
        page_size=args.page_size, num_pages=args.num_pages, attention_backend=args.attention_backend,
        dtype=getattr(torch, args.dtype), device=args.device,
    ))
    prompt = args.prompt
    if args.chat:
        prompt = loaded.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed, stop_strings=tuple(args.stop))
    if args.stream:
        printed = ""
        for delta in engine.stream(prompt, params):
            sys.stdout.write(delta.text[len(printed):])
            sys.stdout.flush()
            printed = delta.text
        out = delta
        print()
    else:
        (out,) = engine.generate(prompt, params)
        print(out.text)
    m = out.metrics
    tpot = f"{m.tpot_s * 1000:.1f} ms" if m.tpot_s is not None else "n/a"
    print(f"\n[model {args.model} | load {loaded.load_seconds:.1f} s | prompt {m.num_prompt_tokens} tokens | "
          f"output {m.num_output_tokens} tokens ({out.finish_reason}) | TTFT {m.ttft_s * 1000:.1f} ms | "
          f"TPOT {tpot} | total {m.e2e_s:.2f} s]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
