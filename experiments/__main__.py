"""`python -m experiments`: list the experiments and how to run them."""

from __future__ import annotations

import ast

from experiments.harness.config import REPO_ROOT, list_experiments


def _summary(name: str) -> str:
    # Read the module's docstring without importing it (imports pull in torch and the models).
    source = (REPO_ROOT / "experiments" / f"{name}.py").read_text()
    doc = ast.get_docstring(ast.parse(source)) or ""
    return doc.strip().split("\n")[0]


def main() -> None:
    print("Experiments (python -m experiments.<name> [key=value ...]; --help lists the config):\n")
    for name in list_experiments():
        print(f"  {name:<14} {_summary(name)}")
    print("\n  report         write README.md's results table from results/ (python -m experiments.report)")


if __name__ == "__main__":
    main()
