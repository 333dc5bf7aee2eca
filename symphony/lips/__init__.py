"""Example LIPs: programs that show what prompt serving cannot do.

Each is a plain ``.py`` file with ``async def main(lip)``, runnable with
``python -m symphony.run symphony/lips/<name>.py``:

* ``chat.py``: a multi-turn chat that keeps its KV file between turns (and between runs);
* ``tree_search.py``: a tree search that forks KV files copy-on-write for each branch;
* ``agent.py``: an agent whose tools run on the server, with their results appended in place;
* ``json_decode.py``: decoding constrained to a JSON object with given fields.
"""

from pathlib import Path

LIPS_DIR = Path(__file__).parent


def lip_path(name: str) -> Path:
    """The path of the example LIP ``name`` (e.g. ``"chat"``)."""
    path = LIPS_DIR / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no example LIP {name!r}; have {sorted(p.stem for p in LIPS_DIR.glob('[!_]*.py'))}")
    return path
