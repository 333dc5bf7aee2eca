"""Prompt Cache: Modular Attention Reuse for Low-Latency Inference (Gim et al., MLSys 2024).

The idea: many prompts share long, reusable pieces of text (system prompts, documents, code files,
few-shot examples). A *schema* written in PML declares those pieces as *modules* and fixes the
position every module occupies; each module's attention states (KV) are computed once, at those
positions, and kept. A *prompt* then imports modules by name: serving it means pointing at the
modules' stored KV, computing only the parameter arguments and the prompt's own new text, and
decoding. Time to first token drops from a full prefill to the cost of the new tokens, at the
price of modules not attending to each other (exact when they are independent, which the tests
check against a from-scratch forward with the same block-diagonal mask and positions).

Map of the package (data path top to bottom):

* ``pml.py``      PML: ``Schema``, ``Module``, ``Param``, ``Union``, ``Prompt``; the parser and its errors.
* ``layout.py``   positions: every module's tokens at fixed schema positions; a prompt's selection.
* ``encoder.py``  encoding modules into KV pages (independent, or scaffolded together).
* ``store.py``    the module store: KV in accelerator pages or host memory, LRU eviction.
* ``compose.py``  serving: page tables composed from module pages, masks, arguments, new text.
* ``cache.py``    ``PromptCache``: the public API (``add_schema``, ``generate``, ``generate_baseline``).
* ``pycompile.py`` Python-to-PML: ``if`` becomes a module, ``match`` a union.
* ``data.py``     real inputs for the evaluation: the paper's example schemas, BFCL tool docs, long docs.
"""

from prompt_cache.cache import CacheMetrics, CacheOutput, PromptCache, UnknownSchemaError
from prompt_cache.layout import ChatFormat, SchemaLayout
from prompt_cache.pml import (
    ArgumentTooLongError,
    DuplicateNameError,
    Module,
    Param,
    PMLError,
    PMLSyntaxError,
    Prompt,
    Schema,
    SchemaMismatchError,
    Union,
    UnknownModuleError,
)
from prompt_cache.store import ModuleStore

__all__ = [
    "ArgumentTooLongError",
    "CacheMetrics",
    "CacheOutput",
    "ChatFormat",
    "DuplicateNameError",
    "Module",
    "ModuleStore",
    "PMLError",
    "PMLSyntaxError",
    "Param",
    "Prompt",
    "PromptCache",
    "Schema",
    "SchemaLayout",
    "SchemaMismatchError",
    "Union",
    "UnknownModuleError",
    "UnknownSchemaError",
]
