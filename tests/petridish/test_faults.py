"""A crashed or stalled user process ends only its own request, with a clear error."""

import os
import signal

from core.config import EngineConfig
from core.engine import Engine
from core.sampling import SamplingParams
from petridish.messages import PromptRequest

PROMPTS = {0: "alpha secret one", 2: "beta secret two", 3: "gamma secret three"}
PARAMS = SamplingParams(max_new_tokens=8, ignore_eos=True)


def test_crashed_and_stalled_user_processes_fail_only_their_requests(llama_system):
    """Users 2 and 3 (spare processes of the shared system) fail mid-decode; user 0 finishes."""
    pd = llama_system
    service = pd.service
    for u, prompt in PROMPTS.items():
        pd.users[u].submit(PromptRequest(100 + u, prompt, PARAMS))
    for u in PROMPTS:
        assert service.admit(pd.users[u], 100 + u, PARAMS) is None
    for _ in range(2):
        assert service.step() == []
    crashed, stalled = pd.users[2], pd.users[3]
    os.kill(crashed.pid, signal.SIGKILL)
    os.kill(stalled.pid, signal.SIGSTOP)
    results = {r.request_id - 100: r for r in service.run()}

    assert "UserCrashedError" in results[2].error and str(crashed.pid) in results[2].error
    assert "UserStalledError" in results[3].error and "did not answer" in results[3].error
    assert not stalled.process.is_alive()  # a stalled process is killed, its private KV gone
    assert results[0].error is None
    engine = Engine(service.model, service.tokenizer, EngineConfig(num_pages=64, attention_backend="torch"))
    assert results[0].token_ids == engine.generate([PROMPTS[0]], PARAMS)[0].token_ids
    assert service.num_active == 0


def test_failed_prefill_is_reported_and_the_process_stays_usable(llama_system):
    bad = llama_system.generate(["x" * 600], PARAMS)[0]  # past the tiny model's 512 positions
    assert bad.error is not None and "PromptTooLongError" in bad.error and "do not fit" in bad.error
    good = llama_system.generate(["alpha secret one"], PARAMS)[0]
    assert good.error is None and len(good.token_ids) == 8
