"""The example inferlets, each checked against plain decoding or its own defining property."""

import pytest

PROMPT = "Pie runs inferlets"


def test_text_completion_matches_engine_greedy_generate(runtime, greedy, ids):
    assert ids(runtime.run("text_completion", [PROMPT, "16"], timeout=300)) == greedy(PROMPT, 16)


def test_concurrent_completions_are_batched_and_unchanged(runtime, greedy, ids):
    prompts = [f"{PROMPT} {i}" for i in range(4)]
    before = runtime.batcher.stats.mean_batch_size
    jobs = [runtime.launch("text_completion", [p, "10"]) for p in prompts]
    results = [ids(j.wait(300)) for j in jobs]
    assert results == [greedy(p, 10) for p in prompts]
    assert runtime.batcher.stats.mean_batch_size > before  # commands of different inferlets shared batches


def test_speculative_decoding_output_equals_greedy(runtime, greedy, ids):
    prompt = "abcabcabcabcabc"  # repetitive, so prompt-lookup drafts exist
    out = runtime.run("speculative_decoding", [prompt, "20", "4", "2"], timeout=300)
    assert ids(out) == greedy(prompt, 20)
    accepted, drafted = map(int, out.rsplit("\n", 1)[1].split("/"))
    assert drafted > 0 and 0 <= accepted <= drafted


def test_beam_search_with_one_beam_is_greedy(runtime, greedy, ids):
    assert ids(runtime.run("beam_search", [PROMPT, "1", "10"], timeout=300)) == greedy(PROMPT, 10)


def test_beam_search_frees_every_page(runtime):
    free = runtime.pool.allocator.num_free
    runtime.run("beam_search", [PROMPT, "3", "8"], timeout=300)
    assert runtime.pool.allocator.num_free == free


def test_attention_sink_with_a_wide_window_is_greedy_and_a_narrow_one_bounds_pages(runtime, greedy, ids):
    wide = runtime.run("attention_sink", [PROMPT, "12", "1", "100"], timeout=300)
    assert ids(wide) == greedy(PROMPT, 12)
    narrow = runtime.run("attention_sink", [PROMPT, "40", "1", "2"], timeout=300)
    peak = int(narrow.rsplit("peak_pages=", 1)[1])
    assert peak <= 1 + 2 + 2  # sink + window + the partial page + one being filled
    assert len(ids(narrow)) == 40


def test_constrained_decoding_returns_one_of_the_choices(runtime):
    choices = ["red apple", "green pear", "blue plum"]
    assert runtime.run("constrained_decoding", [PROMPT, *choices], timeout=300) in choices


def test_tree_of_thought_explores_branches_from_one_shared_prefix(runtime):
    free = runtime.pool.allocator.num_free
    inf = runtime.launch("tree_of_thought", ["What is 2 + 3?", "3", "2", "6"])
    out = inf.wait(300)
    assert out.endswith("explored=13")  # 1 root + 3 children + 3 x 3 grandchildren
    assert inf.stats.calls["copy-kv-page"] > 0  # forks copied only partial pages
    assert runtime.pool.allocator.num_free == free


@pytest.mark.parametrize("share", ["", "tooldoc"])
def test_agent_calls_granted_tool_without_client_round_trip(runtime, share):
    calls = []

    def search(query):
        calls.append(query)
        return "Pie was published at SOSP 2025."

    inf = runtime.launch("agent_react", ["Where was Pie published?", "2", "6", "", share], tools={"search": search})
    inf.wait(300)
    assert len(calls) == 2 and inf.stats.calls["call-tool"] == 2


def test_agents_sharing_exported_tool_doc_answer_like_agents_that_do_not(runtime):
    def search(query):
        return "fact"

    args = ["Q?", "1", "6", "Tools: search(query). " * 6]
    alone = runtime.run("agent_react", [*args, ""], tools={"search": search}, timeout=300)
    first = runtime.run("agent_react", [*args, "doc-a"], tools={"search": search}, timeout=300)
    second = runtime.launch("agent_react", [*args, "doc-a"], tools={"search": search})
    assert second.wait(300) == first == alone
    assert second.stats.calls["import-kv-pages"] == 1
    runtime.exports.unexport("doc-a")


def test_ungranted_tool_is_an_error_inside_the_inferlet(runtime):
    inf = runtime.launch("agent_react", ["Q?", "1", "4"])  # no tools granted
    with pytest.raises(Exception, match="not granted"):
        inf.wait(300)
