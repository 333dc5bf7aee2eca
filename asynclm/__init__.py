"""AsyncLM: "Asynchronous LLM Function Calling" (Gim, Lee, Zhong), on the shared paged-KV engine.

The idea: instead of blocking generation on every function call, the model emits a call and keeps
generating while the call runs; when the call returns, its result is delivered as an *interrupt*:
its tokens are appended to the running sequence's KV cache at the current position between two
decode steps, and decoding continues from there with no restart and no re-prefill. An in-context
protocol (CML: ``[CALL] ... [END]``, ``[INTR] id [HEAD] value [END]``, ``[TRAP][END]``) tells the model
what is happening; a token monitor in sampling keeps its output valid CML; a trap handler decides
what to do with the KV of a sequence that must wait (keep, swap to host, or recompute later).

Map of the package:

    protocol.py   CML as data: tags, grammar, FunctionCall / Interrupt, call-body parser
    vocab.py      how the tags map onto a tokenizer (one reserved token each; Gemma's <unused0..4>)
    parser.py     the stream parser: a state machine over a model's tokens -> protocol events
    monitor.py    the token monitor: logit masks, forced call ids, critical sections
    executor.py   runs calls concurrently (asyncio); errors / timeouts / garbage -> error interrupts
    functions.py  real implementations of computable BFCL functions, and the latency model
    clock.py      virtual clock (measured or calibrated compute time) and wall clock
    trap.py       trap handler: keep / swap / recompute, its cost model and the measured fit
    runtime.py    the engine integration: batched decoding with per-sequence interrupts, and the
                  four systems compared (Sync, Sync-Parallel, Async-Naive, Async)
    sources.py    who picks tokens: sampling (monitor-masked) or the teacher-forced BFCL script
    prompt.py     the prompt that describes CML and the functions (optionally few-shot)
    bfcl.py       BFCL parallel / parallel_multiple tasks from bfcl-eval, AST match, multi-step tasks
    finetune.py   the paper's fine-tuning recipe: simulated LPT traces, LoRA + tag rows, in torch

Public API: :class:`AsyncLMRuntime`, :class:`AsyncTask`, :class:`Mode`, :class:`Executor`,
:class:`CMLVocab`, :class:`FunctionCall`, :class:`Interrupt`, :class:`TeacherForcedSource`,
:class:`SampledSource`, :func:`load_tasks`. The evaluation is ``python -m experiments.asynclm``.
"""

from asynclm.bfcl import BFCLTask, ast_match, load_tasks, multi_step_tasks
from asynclm.clock import StepCostModel, VirtualClock, WallClock
from asynclm.executor import CallResult, Executor
from asynclm.functions import LatencyModel
from asynclm.protocol import FunctionCall, Interrupt, Tag
from asynclm.runtime import AsyncLMRuntime, AsyncTask, Mode, TaskResult
from asynclm.sources import SampledSource, TeacherForcedSource
from asynclm.trap import TrapAction, TrapCostModel
from asynclm.vocab import CMLVocab

__all__ = [
    "AsyncLMRuntime", "AsyncTask", "BFCLTask", "CMLVocab", "CallResult", "Executor", "FunctionCall",
    "Interrupt", "LatencyModel", "Mode", "SampledSource", "StepCostModel", "Tag", "TaskResult",
    "TeacherForcedSource", "TrapAction", "TrapCostModel", "VirtualClock", "WallClock", "ast_match",
    "load_tasks", "multi_step_tasks",
]
