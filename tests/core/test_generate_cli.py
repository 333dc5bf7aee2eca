import subprocess
import sys

from core.testing import tiny_checkpoint


def test_generate_help_documents_every_option():
    out = subprocess.run([sys.executable, "-m", "core.generate", "--help"], capture_output=True, text=True, check=True)
    for flag in ("--prompt", "--max-new-tokens", "--model", "--temperature", "--top-k", "--top-p", "--seed", "--stream"):
        assert flag in out.stdout


def test_generate_prints_the_completion_and_its_timings():
    out = subprocess.run(
        [sys.executable, "-m", "core.generate", "--model", str(tiny_checkpoint("llama")), "--prompt", "Hi",
         "--max-new-tokens", "5", "--stream"],
        capture_output=True, text=True, check=True,
    )
    assert "TTFT" in out.stderr and "TPOT" in out.stderr and "output 5 tokens" in out.stderr
