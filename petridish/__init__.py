"""Petridish: "Confidential Prompting: Privacy-preserving LLM Inference on Cloud" (Gim, Li, Zhong).

**Idea.** Secure Partitioned Decoding (SPD) splits each user's attention in two. A per-user
process (:class:`UserProcess`) receives the user's private prompt, runs its prefill, and keeps the
prompt's KV. One service process (:class:`ServiceProcess`), shared by all users, batches every
user's decoding: it runs the model on generated tokens only, keeps only their KV, and at every
layer sends each user process that layer's queries (before its own K/V projection, so the
exchange overlaps compute); the user process returns the partial attention over the private KV
(normalised output and log-sum-exp per head), and the service merges it with its own part exactly
by the log-sum-exp rule. Outputs are identical to plain decoding; the service never holds the
prompt. Prompt Obfuscation (:mod:`petridish.obfuscation`) additionally hides the prompt among
equally likely decoys, so that even the outputs the service sees do not single out the secret.

**Map.**

    messages.py         the boundary: QueryMessage, PartialAttention (hot path), PromptRequest,
                        PrefillReply, UserFailure (control); nothing else crosses
    channel.py          shared-memory request/response channel with pipe signals; crash/stall errors
    vault.py            PromptVault: private prefill and attention over the private KV (user side)
    user_process.py     UserProcess: the spawned per-user process and its parent-side handle
    service_process.py  ServiceProcess: batched decoding with the ExternalAttention hook, merge, faults
    system.py           Petridish: the controller wiring one service to one process per user
    weights.py          SharedWeights: user processes map the service's weights (one copy in memory)
    model_spec.py       ModelSpec: how a process loads the model from a checkpoint
    obfuscation.py      Prompt Obfuscation: greedy quantised decoy sampling, one masked buffer
    baselines.py        NoProtection (plain batched engine) and FullIsolation (a model per user)

**Threat model.** The paper runs Petridish inside a confidential VM (AMD SEV-SNP with GPU
confidential computing): the provider's host, hypervisor and operators are outside the trust
boundary, remote attestation proves to users and the provider which (open) software runs inside,
prompts and outputs travel over channels encrypted end to end into the CVM, the OS inside isolates
processes, and user processes have no network (a network namespace) so they can only answer the
service. The adversary is an honest-but-curious provider who controls the *service* code.

What this reproduction guarantees (tested in ``tests/petridish``):

* the service process receives only :class:`PrefillReply` (first output tokens, next positions)
  and :class:`PartialAttention` (per-layer attention aggregates); it never receives a private
  token id, the prompt text, or any prompt K/V, and runs the model only on generated tokens;
* each user process is a separate OS process, *spawned* (not forked), so it holds no copy of the
  service's or other users' memory; a crashed or stalled user process fails only its own request.

What it does **not** guarantee (the CVM and the OS configuration provide these in the paper):

* nothing protects against the machine's owner: root, the hypervisor or a debugger can read any
  process; there is no attestation, no encryption of the controller's channels, no network
  namespace for user processes (add ``unshare --net`` / seccomp in a deployment);
* the controller (here the Python process that also runs the service) relays prompts; a
  deployment runs it as separate attested code. Our leak tests check the *service object's*
  inputs and state, not the address space it shares with the controller;
* shared weights are mapped read-write (torch shared memory), so a malicious user process could
  corrupt them; confidentiality of prompts is not affected, integrity of answers is;
* SPD by design reveals to the service the prompt's length (the positions of generated tokens),
  the outputs, and per-layer attention aggregates (out, lse) of generated-token queries over the
  private KV, from which an attacker might try to infer the prompt. The paper argues these are
  hard to invert; Prompt Obfuscation is the paper's defence against inference from outputs.
"""

from petridish.baselines import FullIsolation, NoProtection
from petridish.channel import ChannelError, UserCrashedError, UserStalledError
from petridish.messages import PartialAttention, PrefillReply, PromptRequest, QueryMessage
from petridish.model_spec import ModelSpec
from petridish.obfuscation import ObfuscationConfig, ObfuscationError
from petridish.service_process import RequestResult, ServiceConfig, ServiceProcess
from petridish.system import Petridish
from petridish.user_process import UserProcess, UserProcessConfig, UserRequestError
from petridish.weights import SharedWeights

__all__ = [
    "ChannelError",
    "FullIsolation",
    "ModelSpec",
    "NoProtection",
    "ObfuscationConfig",
    "ObfuscationError",
    "PartialAttention",
    "Petridish",
    "PrefillReply",
    "PromptRequest",
    "QueryMessage",
    "RequestResult",
    "ServiceConfig",
    "ServiceProcess",
    "SharedWeights",
    "UserCrashedError",
    "UserProcess",
    "UserProcessConfig",
    "UserRequestError",
    "UserStalledError",
]
