"""A crashed or stalled user process ends only its own request, with a clear error."""

import os
import signal

import pytest

from core.sampling import SamplingParams
from petridish.messages import PromptRequest
from petridish.system import Petridish

PROMPTS = ["alpha secret one", "beta secret two"]
PARAMS = SamplingParams(max_new_tokens=8, ignore_eos=True)


@pytest.fixture
def system(llama_system):
    return llama_system


def _serve_with_fault(pd: Petridish, victim: int, fault) -> dict:
    """Admit both requests, decode two steps, inject ``fault`` into one user, finish."""
    for i, prompt in enumerate(PROMPTS):
        pd.users[i].submit(PromptRequest(100 + i, prompt, PARAMS))
    results = {}
    for i in range(2):
        assert pd.service.admit(pd.users[i], 100 + i, PARAMS) is None
    for _ in range(2):
        assert pd.service.step() == []
    fault(pd.users[victim].pid)
    for r in pd.service.run():
        results[r.request_id - 100] = r
    return results


def test_crashed_user_process_fails_only_its_request(system):
    reference = system.generate(PROMPTS, PARAMS)
    results = _serve_with_fault(system, 1, lambda pid: os.kill(pid, signal.SIGKILL))
    assert "UserCrashedError" in results[1].error and str(system.users[1].pid) in results[1].error
    assert results[0].error is None
    assert results[0].token_ids == reference[0].token_ids


def test_stalled_user_process_times_out_and_others_continue(system):
    reference = system.generate(PROMPTS, PARAMS)  # also replaces the process killed above
    victim = system.users[0]
    results = _serve_with_fault(system, 0, lambda pid: os.kill(pid, signal.SIGSTOP))
    assert "UserStalledError" in results[0].error and "did not answer" in results[0].error
    assert not victim.process.is_alive()  # a stalled process is killed, its private KV gone
    assert results[1].error is None
    assert results[1].token_ids == reference[1].token_ids


def test_failed_prefill_is_reported_and_the_process_stays_usable(system):
    bad = system.generate(["x" * 600], PARAMS)[0]  # past the tiny model's 512 positions
    assert bad.error is not None and "PromptTooLongError" in bad.error and "do not fit" in bad.error
    good = system.generate(PROMPTS[:1], PARAMS)[0]
    assert good.error is None and len(good.token_ids) == 8
