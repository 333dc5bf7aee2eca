"""The example LIPs run end to end and agree with plain full-recompute decoding."""

import json
import subprocess
import sys

import pytest
import torch
from _symphony_helpers import make_kernel, reference_logits

from core.loader import model_available
from core.testing import tiny_checkpoint
from symphony import ProcessState
from symphony.lips import lip_path
from symphony.lips.agent import FACTS


def _find(haystack: list[int], needle: list[int], start: int) -> int:
    for i in range(start, len(haystack) - len(needle) + 1):
        if haystack[i : i + len(needle)] == needle:
            return i
    raise AssertionError(f"{needle} not found in the file after index {start}")


def test_chat_keeps_its_file_and_replies_like_greedy_full_recompute(llama_kernel):
    pid = llama_kernel.submit(lip_path("chat"), {"max_new_tokens": 5}, user="ann")
    replies = []
    for message in ["hello", "and again", None]:
        llama_kernel.send(pid, message)
        llama_kernel.run()
        replies += [m["tokens"] for m in llama_kernel.receive(pid)]
    proc = llama_kernel.process(pid)
    assert proc.state is ProcessState.EXITED and proc.result["turns"] == 2
    file_ids = llama_kernel.kvfs.lookup("ann", "/home/ann/chat").token_ids
    # Turn 2 appended only its new tokens: the model saw each token of the file exactly once.
    assert proc.stats["predicted_tokens"] == len(file_ids)
    start = 0
    for reply in replies:
        start = _find(file_ids, reply, start)
        for j, token in enumerate(reply):
            assert int(reference_logits(llama_kernel.model, file_ids[: start + j]).argmax()) == token


def test_tree_search_scores_match_full_recompute(kernel):
    args = {"prompt": "abc", "depth": 2, "branch": 2, "width": 2, "step_tokens": 2}
    proc = kernel.run_program(lip_path("tree_search"), args)
    assert proc.error is None, proc.error_text
    prompt = [kernel.tokenizer.bos_token_id, *kernel.tokenizer.encode("abc", add_special_tokens=False)]
    tokens = proc.result["tokens"]
    assert len(tokens) == 4 and proc.result["nodes"] == 2 + 4
    lps = [torch.log_softmax(reference_logits(kernel.model, prompt + tokens[:j]), -1)[tokens[j]] for j in range(4)]
    assert proc.result["score"] == pytest.approx(float(sum(lps) / 4), abs=1e-4)
    # Shared prefixes were computed once: prompt + one token per child per step, and nothing else.
    assert proc.stats["predicted_tokens"] == len(prompt) + 2 * 2 + 4 * 2
    assert not kernel.kvfs.files  # every branch was freed


def test_agent_runs_tools_server_side(llama_kernel):
    args = {
        "steps": 2,
        "think_tokens": 4,
        "answer_tokens": 4,
        "plan": ["largest_planet", "tallest_mountain"],
        "tool_latency_s": 0.01,
    }
    proc = llama_kernel.run_program(lip_path("agent"), args)
    assert proc.error is None, proc.error_text
    assert proc.stats["tool_calls"] == 2
    for call in proc.result["calls"]:
        assert call["observation"] == FACTS[call["key"]]


def test_json_lip_output_always_parses_with_the_requested_fields(llama_kernel):
    fields = {"name": "str", "age": "int", "zip": "int"}
    args = {"prompt": "a", "fields": fields, "max_value_tokens": 3}
    proc = llama_kernel.run_program(lip_path("json_decode"), args)
    assert proc.error is None, proc.error_text
    value = json.loads(proc.result["text"])
    assert list(value) == list(fields)
    assert [type(v).__name__ for v in value.values()] == list(fields.values())


def test_cli_help_and_chat_file_persists_across_runs(tmp_path, capsys):
    from symphony.run import main as cli

    with pytest.raises(SystemExit) as exit_info:
        cli(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "LIP" in help_text and "--kvfs-dir" in help_text
    lengths = []
    for _ in range(2):
        argv = [
            str(lip_path("chat")),
            "--model",
            str(tiny_checkpoint("llama")),
            "--message",
            "hi",
            "--arg",
            "max_new_tokens=3",
            "--kvfs-dir",
            str(tmp_path),
            "--user",
            "cli",
            "--page-size",
            "4",
        ]
        assert cli(argv) == 0
        final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert final["state"] == "exited"
        lengths.append(final["result"]["length"])
    assert lengths[1] > lengths[0]  # the second run continued the same KV file


def test_cli_module_entry_point_prints_help():
    out = subprocess.run([sys.executable, "-m", "symphony.run", "--help"], capture_output=True, text=True, check=True)
    assert "python -m symphony.run" in out.stdout


@pytest.mark.real_model
@pytest.mark.skipif(not model_available(), reason="the embedded Gemma 3 270M package is not installed")
def test_real_gemma_fork_logits_match_from_scratch():
    from core.loader import load_model

    loaded = load_model()
    kernel = make_kernel(loaded, num_pages=16, page_size=16)
    try:

        async def main(lip):
            fd = lip.create(lip.home + "/p")
            await lip.append(fd, lip.tokenize("The capital of France is", add_special_tokens=True))
            a, b = lip.fork(fd), lip.fork(fd)
            da, db = await lip.gather(lip.predict(a, lip.tokenize(" Paris")), lip.predict(b, lip.tokenize(" a")))
            return [(lip.read(x)[0], d.logits) for x, d in ((a, da), (b, db))]

        proc = kernel.run_program(main)
        assert proc.error is None, proc.error_text
        for ids, logits in proc.result:
            torch.testing.assert_close(logits, reference_logits(kernel.model, ids), rtol=1e-3, atol=1e-3)
    finally:
        kernel.close()
