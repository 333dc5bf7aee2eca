"""Does a small CPU matmul run at the same speed on every Python thread? (It does not, here.)

Found while measuring Pie's overhead (its model runs on a worker thread): on the 2-core
development machine a (1, 640) x (640, 1024) fp32 ``linear`` - the shape of Gemma 3 270M's
one-row projections in a decode step - took ~27 us on the first threads that called torch and
~75-110 us on some threads that called it later (with 2 torch threads: new thread 28 us, then the
main thread 29 us, then another new thread 110 us; with 1 torch thread the main thread was the slow
one). OMP_WAIT_POLICY, KMP_BLOCKTIME, MKL_NUM_THREADS=1 and MKL_DYNAMIC did not remove it; the cause
is not known. A decode step of the engine took ~51 ms on the first thread and ~70
ms on another. Anyone timing one system on the main thread against another on a worker thread
measures this effect, not their system. Run it to see whether a machine has it::

    python bench/thread_gemm.py               # torch threads = 2
    python bench/thread_gemm.py --threads 1
"""

from __future__ import annotations

import argparse
import threading
import time

import torch


def time_linear(rows: int, cols: int, calls: int) -> float:
    """Microseconds per (1, cols) x (cols, rows) linear on the calling thread, after a warm-up."""
    weight, x = torch.randn(rows, cols), torch.randn(1, cols)
    for _ in range(calls // 10):
        torch.nn.functional.linear(x, weight)
    start = time.perf_counter()
    for _ in range(calls):
        torch.nn.functional.linear(x, weight)
    return (time.perf_counter() - start) / calls * 1e6


def on_new_thread(fn, *args) -> float:
    result: list[float] = []
    thread = threading.Thread(target=lambda: result.append(fn(*args)))
    thread.start()
    thread.join()
    return result[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--cols", type=int, default=640)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = (args.rows, args.cols, args.calls)
    print(f"first caller, a new thread: {on_new_thread(time_linear, *shape):7.1f} us")
    print(f"then the main thread:       {time_linear(*shape):7.1f} us")
    print(f"then another new thread:    {on_new_thread(time_linear, *shape):7.1f} us")


if __name__ == "__main__":
    main()
