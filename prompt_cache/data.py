"""Real inputs for the evaluation, all available offline.

* the paper's own example schemas and prompt (``shared/data/prompt-cache-examples``, MIT, from the
  public prototype): the case studies (code generation, personalisation, parameterised prompts);
* BFCL's function documentation (``bfcl-eval`` ships it): a tool catalogue as a schema, one module
  per function, and the benchmark's questions and ground-truth function names;
* Python's own reference documentation (``pydoc_data.topics``, shipped with CPython): long real
  documents, a stand-in for LongBench's long-context tasks, which cannot be downloaded here;
* :func:`longbench_jsonl` reads LongBench's jsonl files from a local path for users who have them.

Every schema built here is PML text, so what the experiments measure is exactly what a user would
write; document text is escaped with :func:`prompt_cache.pml.escape`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from prompt_cache.pml import escape

EXAMPLES_ENV = "PROMPT_CACHE_EXAMPLES"


class DataNotFoundError(FileNotFoundError):
    """An input the experiments need is not installed or not at the expected path."""


@dataclass
class Task:
    """One prompt to serve: PML text, plus what a correct answer contains (when known)."""

    name: str
    prompt: str
    answers: list[str] = field(default_factory=list)


@dataclass
class Workload:
    name: str
    schema: str  # PML
    tasks: list[Task]


def examples_dir() -> Path:
    """The paper's example schemas: $PROMPT_CACHE_EXAMPLES, else ../shared/data/... beside the repo."""
    env = os.environ.get(EXAMPLES_ENV)
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "prompt-cache-examples"
    if not path.is_dir():
        raise DataNotFoundError(f"the paper's example schemas are not at {path}; set {EXAMPLES_ENV}")
    return path


# -- the paper's case studies ------------------------------------------------------------------------
def code_generation(variant: str = "bookstore") -> Workload:
    """Fig 6: the source files are modules; the prompt imports all of them and asks for code."""
    path = examples_dir() / f"code_generation_{variant}.xml"
    schema = path.read_text()
    name = schema.split('name="', 1)[1].split('"', 1)[0]
    files = [line.split('"')[1] for line in schema.splitlines() if line.strip().startswith("<module name=")]
    imports = "".join(f"<{f}/>" for f in files)
    request = ("Add a method that returns the five most recent records, sorted by time, and show how to "
               "call it.")
    return Workload(f"code-{variant}", schema,
                    [Task(f"code-{variant}", f'<prompt schema="{name}">{imports}<user>{request}</user></prompt>')])


def personalization() -> Workload:
    """Fig 7: one member of each union (grade, proficiency, recency, style, assessment, motivation)."""
    schema = (examples_dir() / "personalization-education.xml").read_text()
    picks = [
        ["middle-school", "beginner", "recently-studied", "visual", "multiple-choice", "needs-encouragement"],
        ["college", "advanced", "studied-a-year-before", "reading", "essay", "high-intrinsic-motivation"],
    ]
    tasks = [Task(f"education-{i}", '<prompt schema="personalization-education">' + "".join(f"<{m}/>" for m in p)
                  + "<user>Teach me about photosynthesis.</user></prompt>") for i, p in enumerate(picks)]
    return Workload("personalization", schema, tasks)


def parameterized() -> Workload:
    """Fig 8: the travel planner with arguments for its parameters."""
    schema = (examples_dir() / "parameterized_prompts.xml").read_text()
    tasks = [
        Task("travel-domestic", '<prompt schema="travel"><travel-plan duration="two weeks">'
             '<domestic city="Kyoto"/></travel-plan><user>Draft day one.</user></prompt>'),
        Task("travel-overseas", '<prompt schema="travel"><travel-plan duration="ten days"><overseas><maldives/>'
             '</overseas></travel-plan><user>Draft day one.</user></prompt>'),
    ]
    return Workload("parameterized", schema, tasks)


# -- BFCL tool documentation ---------------------------------------------------------------------------
def _bfcl_dir() -> Path:
    try:
        import bfcl_eval
    except ImportError as e:
        raise DataNotFoundError("the bfcl-eval package (BFCL data) is not installed") from e
    return Path(bfcl_eval.__file__).parent / "data"


def bfcl(num_tasks: int, category: str = "multiple") -> Workload:
    """A tool catalogue: the functions of ``num_tasks`` BFCL tasks, one module each; one prompt per task."""
    data = _bfcl_dir()
    questions = [json.loads(line) for line in (data / f"BFCL_v4_{category}.json").open()][:num_tasks]
    answers = {}
    for line in (data / "possible_answer" / f"BFCL_v4_{category}.json").open():
        row = json.loads(line)
        answers[row["id"]] = [name for call in row["ground_truth"] for name in call]
    modules, tasks, seen = [], [], {}
    for q in questions:
        names = []
        for fn in q["function"]:
            module = _module_name(fn["name"])
            if module not in seen:
                seen[module] = True
                doc = json.dumps(fn, indent=1)
                modules.append(f'<module name="{module}">Function {escape(fn["name"])}:\n{escape(doc)}\n</module>')
            names.append(module)
        question = " ".join(m["content"] for m in q["question"][0] if m["role"] == "user")
        imports = "".join(f"<{n}/>" for n in dict.fromkeys(names))
        tasks.append(Task(q["id"], f'<prompt schema="bfcl-{category}">{imports}<user>{escape(question)} '
                          "Answer with the function call to make.</user></prompt>", answers.get(q["id"], [])))
    schema = (f'<schema name="bfcl-{category}"><system>You can call these functions. Reply with a call '
              "such as name(arg=value).</system>\n<user>" + "\n".join(modules) + "\n</user></schema>")
    return Workload(f"bfcl-{category}", schema, tasks)


def _module_name(function: str) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in function).lstrip("-") or "f"


# -- long documents (Python's reference documentation) ----------------------------------------------------
def python_docs(num_docs: int, max_tokens: int | None = None, tokenizer=None, multi: int = 1) -> Workload:
    """Long real documents, one module each; each prompt imports ``multi`` of them and asks for a summary.

    ``max_tokens`` (with ``tokenizer``) cuts each document to that many tokens, for length sweeps.
    """
    from pydoc_data.topics import topics

    keys = sorted(topics, key=lambda k: (-len(topics[k]), k))[:num_docs]
    modules, tasks = [], []
    for k in keys:
        text = topics[k]
        if max_tokens is not None and tokenizer is not None:
            text = fit_tokens(text, max_tokens, tokenizer)
        modules.append(f'<module name="doc-{k}">{escape(text)}</module>')
    for i in range(0, len(keys) - multi + 1, multi):
        group = keys[i : i + multi]
        imports = "".join(f"<doc-{k}/>" for k in group)
        tasks.append(Task("+".join(group), f'<prompt schema="pydocs">{imports}<user>'
                          "Summarize the documentation above in two sentences.</user></prompt>", []))
    schema = ('<schema name="pydocs"><system>You answer questions about Python documentation.</system>\n<user>'
              + "\n".join(modules) + "\n</user></schema>")
    return Workload(f"pydocs-x{multi}", schema, tasks)


def long_document(tokens: int, tokenizer) -> Workload:
    """One module of exactly about ``tokens`` tokens of real documentation, and one short question."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics, key=lambda k: (-len(topics[k]), k)))
    doc = fit_tokens(text, tokens, tokenizer)
    schema = f'<schema name="doc{tokens}"><user><module name="doc">{escape(doc)}</module></user></schema>'
    prompt = (f'<prompt schema="doc{tokens}"><doc/><user>What is this documentation about? Answer in one '
              "sentence.</user></prompt>")
    return Workload(f"doc-{tokens}", schema, [Task(f"doc-{tokens}", prompt)])


def fit_tokens(text: str, tokens: int, tokenizer) -> str:
    """A prefix of ``text`` that tokenizes to about ``tokens`` tokens."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) < tokens:
        raise DataNotFoundError(f"only {len(ids)} tokens of text available, {tokens} asked")
    return tokenizer.decode(ids[:tokens])


def longbench_jsonl(path: str | Path, limit: int | None = None) -> Workload:
    """A LongBench task file (``context``, ``input``, ``answers`` per line) from a local path."""
    path = Path(path)
    if not path.exists():
        raise DataNotFoundError(f"no LongBench file at {path}")
    rows = [json.loads(line) for line in path.open()][:limit]
    name = path.stem.replace("_", "-")
    modules = [f'<module name="ctx{i}">{escape(r["context"])}</module>' for i, r in enumerate(rows)]
    tasks = [Task(f"{name}-{i}", f'<prompt schema="{name}"><ctx{i}/><user>{escape(r["input"])}</user></prompt>',
                  list(r.get("answers", []))) for i, r in enumerate(rows)]
    return Workload(name, f'<schema name="{name}">' + "\n".join(modules) + "</schema>", tasks)
