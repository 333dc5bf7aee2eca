"""BFCL tasks as shipped in the ``bfcl-eval`` package (``bfcl_eval/data/``), no hub download.

Loads the ``parallel``, ``live_parallel`` and ``parallel_multiple`` categories with their ``possible_answer`` files,
turns each possible answer into the ground-truth :class:`~asynclm.protocol.FunctionCall` list that the
teacher-forced mode emits, and checks predicted calls with BFCL's AST-match rule (same function
names, every required argument present, every value among the allowed ones, order free).

``multi_step_parallel_tasks`` builds the paper's ``v3-multi-step-parallel`` tasks (its Fig 6): each
combines three different samples of ``multi_turn_base``, each sample being the sequential calls of its
first turn (1-5 calls, each needing the previous one's result), so a task holds three independent
chains. ``multi_step_tasks`` is our earlier construction (``steps`` chained ``parallel_multiple`` tasks,
every call of step ``s+1`` depending on one seeded random call of step ``s``), kept for the
fine-tuning traces and as ``sweep.multi_step_from=parallel_multiple``.
"""

from __future__ import annotations

import ast
import json
import random
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from asynclm.protocol import FunctionCall

CATEGORIES = ("parallel", "live_parallel", "parallel_multiple")
MULTI_TURN = "multi_turn_base"
_FILE = "BFCL_v4_{category}.json"
_FUNC_DOCS = ("gorilla_file_system", "math_api", "message_api", "posting_api", "ticket_api", "trading_bot",
              "travel_booking", "vehicle_control")  # the classes multi_turn_base uses


class BFCLDataError(RuntimeError):
    """The bfcl-eval data is missing or a record does not have the expected shape."""


@dataclass(frozen=True)
class BFCLTask:
    task_id: str
    category: str
    question: str  # the user turn
    functions: list[dict]  # BFCL function docs (name, description, parameters)
    possible_answer: list[dict]  # BFCL ground truth: [{name: {arg: [allowed values]}}]
    # Multi-step tasks: depends_on[i] = indices of calls that call i needs results of.
    depends_on: tuple[tuple[int, ...], ...] = field(default=())

    def ground_truth_calls(self) -> list[FunctionCall]:
        """One concrete call per answer entry (first allowed value per argument), ids 0..n-1."""
        calls = []
        for i, entry in enumerate(self.possible_answer):
            ((name, args),) = entry.items()
            chosen = {}
            for key, allowed in args.items():
                options = [v for v in allowed if v != ""]
                if options:  # "" means "may be omitted"; omit when it is the only option
                    chosen[key] = _first_option(options[0])
            calls.append(FunctionCall(i, name, chosen))
        return calls

    def dependencies(self) -> tuple[tuple[int, ...], ...]:
        return self.depends_on or tuple(() for _ in self.possible_answer)


def _first_option(value: Any) -> Any:
    """Nested dicts in BFCL answers hold lists of allowed values per key, like the top level."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            options = [o for o in v if o != ""] if isinstance(v, list) else [v]
            if options:
                out[k] = _first_option(options[0])
        return out
    return value


def _data_dir():
    try:
        return resources.files("bfcl_eval") / "data"
    except ModuleNotFoundError as e:
        raise BFCLDataError("the bfcl-eval package is not installed (pip install bfcl-eval)") from e


@cache
def _read_jsonl(relpath: str) -> tuple[dict, ...]:
    path = _data_dir().joinpath(*relpath.split("/"))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise BFCLDataError(f"bfcl-eval has no {relpath}") from e
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise BFCLDataError(f"{relpath}:{n}: not JSON ({e.msg})") from e
    return tuple(out)


def load_tasks(category: str, limit: int | None = None) -> list[BFCLTask]:
    """Tasks of one category (see ``CATEGORIES``) joined with their answers."""
    if category not in CATEGORIES:
        raise BFCLDataError(f"category {category!r} is not one of {CATEGORIES}")
    questions = _read_jsonl(_FILE.format(category=category))
    answer_file = "possible_answer/" + _FILE.format(category=category)
    answers = {a["id"]: a["ground_truth"] for a in _read_jsonl(answer_file)}
    tasks = []
    for rec in questions[:limit]:
        if rec["id"] not in answers:
            raise BFCLDataError(f"{category}: task {rec['id']} has no possible_answer entry")
        turns = rec["question"][0]
        user = "\n".join(m["content"] for m in turns if m["role"] == "user")
        tasks.append(BFCLTask(rec["id"], category, user, list(rec["function"]), list(answers[rec["id"]])))
    return tasks


def multi_step_tasks(base: list[BFCLTask], steps: int, count: int, seed: int = 0) -> list[BFCLTask]:
    """``count`` tasks chaining ``steps`` base tasks; each call depends on one call of the step before."""
    if steps < 1 or len(base) < steps:
        raise BFCLDataError(f"need at least {steps} base tasks for {steps}-step tasks, got {len(base)}")
    rng = random.Random(seed)
    out = []
    for k in range(count):
        parts = [base[(k * steps + s) % len(base)] for s in range(steps)]
        answer, functions, deps, questions = [], [], [], []
        prev: list[int] = []
        seen_names = set()
        for part in parts:
            idx = list(range(len(answer), len(answer) + len(part.possible_answer)))
            deps.extend((rng.choice(prev),) if prev else () for _ in idx)
            answer.extend(part.possible_answer)
            questions.append(part.question)
            for f in part.functions:
                if f["name"] not in seen_names:
                    seen_names.add(f["name"])
                    functions.append(f)
            prev = idx
        question = " Then, using those results: ".join(questions)
        out.append(BFCLTask(f"multi_step_{k}", "multi_step", question, functions, answer, tuple(deps)))
    return out


def ast_match(predicted: list[FunctionCall], possible_answer: list[dict]) -> bool:
    """BFCL's AST check for parallel calls: a one-to-one, order-free match to the answer entries."""
    if len(predicted) != len(possible_answer):
        return False
    remaining = list(possible_answer)
    for call in predicted:
        for j, entry in enumerate(remaining):
            if _call_matches(call, entry):
                del remaining[j]
                break
        else:
            return False
    return True


def _call_matches(call: FunctionCall, entry: dict) -> bool:
    ((name, args),) = entry.items()
    if call.name != name or set(call.arguments) - set(args):
        return False
    for key, allowed in args.items():
        if key not in call.arguments:
            if "" not in allowed:  # required argument missing
                return False
        elif not any(_value_equal(call.arguments[key], a) for a in allowed):
            return False
    return True


def _value_equal(value: Any, allowed: Any) -> bool:
    if isinstance(allowed, str) and isinstance(value, str):
        return value.strip().lower() == allowed.strip().lower()  # BFCL normalises case and spaces
    if isinstance(allowed, bool) or isinstance(value, bool):
        return value is allowed
    if isinstance(allowed, int | float) and isinstance(value, int | float):
        return float(value) == float(allowed)
    if isinstance(allowed, list) and isinstance(value, list):
        return len(value) == len(allowed) and all(_value_equal(v, a) for v, a in zip(value, allowed))
    if isinstance(allowed, dict) and isinstance(value, dict):
        options = {k: a if isinstance(a, list) else [a] for k, a in allowed.items()}
        matches = (any(_value_equal(value[k], a) for a in options[k]) for k in value)
        return set(value) <= set(options) and all(matches)
    return value == allowed


# -- the paper's multi-step parallel tasks (``v3-multi-step-parallel``) ---------------------------------
def load_multi_turn_chains(max_calls: int = 5) -> list[BFCLTask]:
    """First turns of ``multi_turn_base`` as sequential chains: call i needs the result of call i-1.

    BFCL's multi-turn calls act on a shared state (``cd`` then ``mv``), so within a turn each call
    depends on the one before. Turns with more than ``max_calls`` calls are skipped (the paper: 1-5).
    """
    docs = _multi_turn_docs()
    answers = {a["id"]: a["ground_truth"] for a in _read_jsonl(f"possible_answer/{_FILE.format(category=MULTI_TURN)}")}
    chains = []
    for rec in _read_jsonl(_FILE.format(category=MULTI_TURN)):
        first = answers.get(rec["id"], [[]])[0]
        if not 1 <= len(first) <= max_calls:
            continue
        calls = [_parse_call(text, docs, rec["id"]) for text in first]
        user = "\n".join(m["content"] for m in rec["question"][0] if m["role"] == "user")
        # Only the functions the calls use: the paper gives "all necessary function definitions".
        functions = [docs[n] for n in dict.fromkeys(name for name, _ in calls)]
        answer = [{name: {k: [v] for k, v in args.items()}} for name, args in calls]
        deps = tuple((i - 1,) if i else () for i in range(len(calls)))
        chains.append(BFCLTask(rec["id"], MULTI_TURN, user, functions, answer, deps))
    return chains


def multi_step_parallel_tasks(chains: list[BFCLTask], count: int, per_task: int = 3, seed: int = 0) -> list[BFCLTask]:
    """``count`` tasks, each ``per_task`` different chains drawn at random (seeded), side by side."""
    if len(chains) < per_task:
        raise BFCLDataError(f"need at least {per_task} chains, got {len(chains)}")
    rng = random.Random(seed)
    out = []
    for k in range(count):
        parts = rng.sample(chains, per_task)
        answer, functions, deps, names = [], [], [], set()
        for part in parts:
            offset = len(answer)
            deps.extend(tuple(d + offset for d in dep) for dep in part.dependencies())
            answer.extend(part.possible_answer)
            functions.extend(f for f in part.functions if f["name"] not in names)
            names.update(f["name"] for f in part.functions)
        question = "\n".join(f"Task {i + 1}: {p.question}" for i, p in enumerate(parts))
        key = "+".join(p.task_id.removeprefix("multi_turn_base_") for p in parts)
        out.append(BFCLTask(f"multi_step_parallel_{k}[{key}]", "multi_step_parallel", question, functions,
                            answer, tuple(deps)))
    return out


@cache
def _multi_turn_docs() -> dict[str, dict]:
    docs: dict[str, dict] = {}
    for name in _FUNC_DOCS:
        for doc in _read_jsonl(f"multi_turn_func_doc/{name}.json"):
            docs.setdefault(doc["name"], doc)
    return docs


def _parse_call(text: str, docs: dict[str, dict], where: str) -> tuple[str, dict]:
    """``"mv(source='a', destination='b')"`` -> ("mv", {...}); positional arguments get the doc's names."""
    try:
        node = ast.parse(text, mode="eval").body
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            raise ValueError("not a plain function call")
        name = node.func.id
        if name not in docs:
            raise ValueError(f"no function doc for {name!r}")
        params = list(docs[name]["parameters"].get("properties", {}))
        if len(node.args) > len(params):
            raise ValueError(f"{len(node.args)} positional arguments, {name} has {len(params)} parameters")
        args = {params[i]: ast.literal_eval(a) for i, a in enumerate(node.args)}
        args.update({kw.arg: ast.literal_eval(kw.value) for kw in node.keywords})
    except (SyntaxError, ValueError) as e:
        raise BFCLDataError(f"{where}: cannot read ground-truth call {text!r}: {e}") from e
    return name, args
