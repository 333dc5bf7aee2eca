"""Petridish: the controller that wires one service to one user process per user.

The controller plays the part of the paper's process controller: it receives each user's prompt
(over what would be an encrypted, attested channel) and relays it straight to that user's process;
the service only ever gets the user's :class:`PrefillReply` and partial attention. User processes
persist across calls (their model is loaded once); a dead one is replaced on the next call.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import psutil

from core.sampling import SamplingParams
from petridish.messages import PromptRequest
from petridish.model_spec import ModelSpec
from petridish.service_process import RequestResult, ServiceConfig, ServiceProcess
from petridish.user_process import UserProcess, UserProcessConfig
from petridish.weights import SharedWeights


def unique_bytes(pid: int) -> int:
    """Memory only this process holds (USS); 0 if it is gone."""
    try:
        return int(psutil.Process(pid).memory_full_info().uss)
    except psutil.Error:
        return 0


class Petridish:
    """Secure Partitioned Decoding for ``num_users`` users on one shared service."""

    def __init__(
        self,
        spec: ModelSpec,
        num_users: int,
        service_config: ServiceConfig | None = None,
        user_config: UserProcessConfig | None = None,
        keep_logits: bool = False,
        share_weights: bool = True,
        loaded: tuple | None = None,
    ):
        """``loaded``: the ``(model, tokenizer)`` of ``spec`` if the caller already has them."""
        self.spec = spec
        self.user_config = user_config or UserProcessConfig()
        model, tokenizer = loaded if loaded is not None else spec.load()
        # User processes map the service's weights (one copy in memory) or load their own.
        self.source = SharedWeights.from_model(model, tokenizer) if share_weights else spec
        self.service = ServiceProcess(model, tokenizer, service_config, keep_logits=keep_logits)
        self.users = [self._spawn() for _ in range(num_users)]
        for user in self.users:  # processes load in parallel; wait for all
            user.wait_ready()
        self._next_id = 0

    def _spawn(self) -> UserProcess:
        c = self.service.model.config
        return UserProcess(self.source, c.num_heads, c.head_dim, self.user_config)

    def generate(
        self,
        prompts: Sequence[str],
        params: SamplingParams | None = None,
        public_prefix: str = "",
        obfuscation: object | None = None,
    ) -> list[RequestResult]:
        """Serve one private prompt per user (prompt i goes to user i); results in prompt order."""
        if len(prompts) > len(self.users):
            raise ValueError(f"{len(prompts)} prompts for {len(self.users)} user processes")
        gamma = getattr(obfuscation, "gamma", 1)
        if gamma > self.user_config.max_rows:
            raise ValueError(f"obfuscation gamma {gamma} exceeds the channel's {self.user_config.max_rows} rows")
        params = params or SamplingParams()
        t0 = time.perf_counter()
        ids = []
        for i, prompt in enumerate(prompts):
            if not self.users[i].process.is_alive():
                self.users[i].close()
                self.users[i] = self._spawn()
            ids.append(self._next_id)
            # The prompt goes to the user process only; the request object is not kept.
            self.users[i].submit(PromptRequest(self._next_id, prompt, params, public_prefix, obfuscation))
            self._next_id += 1
        results: dict[int, RequestResult] = {}
        for i, rid in enumerate(ids):
            done = self.service.admit(self.users[i], rid, params, public_prefix, t_start=t0)
            if done is not None:
                results[rid] = done
        for r in self.service.run():
            results[r.request_id] = r
        if obfuscation is not None:  # the client knows which virtual prompt is real
            for r in results.values():
                r.true_row = min(obfuscation.true_row, max(len(r.rows) - 1, 0))
        return [results[rid] for rid in ids]

    def memory_bytes(self, num_users: int | None = None) -> dict[str, int]:
        """Memory of the system serving ``num_users``: weights (once), KV pools, user processes.

        A user process's cost is its unique set size (USS): memory no other process shares, so
        the mapped shared weights are not counted again.
        """
        model = self.service.model
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        pool = sum(t.numel() * t.element_size() for t in [*self.service.pool.k_cache, *self.service.pool.v_cache])
        users = sum(unique_bytes(u.pid) for u in self.users[: num_users or len(self.users)])
        return {"weights_bytes": weights, "service_kv_bytes": pool, "user_processes_bytes": users,
                "total_bytes": weights + pool + users}

    def close(self) -> None:
        for user in self.users:
            user.request_shutdown()
        for user in self.users:
            user.close()

    def __enter__(self) -> Petridish:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
