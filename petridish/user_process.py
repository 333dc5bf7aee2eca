"""UserProcess: one real OS process per user, holding that user's private prompt and its KV.

The process is *spawned* (a fresh interpreter), never forked: a forked child would inherit a copy
of the parent's memory, which may hold other users' data. It gets the model once, either by
mapping the service's weights from shared memory (:class:`SharedWeights`, the default, as in the
paper) or by loading its own copy (:class:`ModelSpec`), then serves requests one at a time:

1. the controller sends a :class:`PromptRequest` over the control pipe (the service never sees it);
2. the process tokenizes and prefills it into its private pool (:class:`PromptVault`) and sends a
   :class:`PrefillReply` (first tokens and next positions: public by construction);
3. until the request finishes it answers :class:`QueryMessage` s from the shared-memory channel with
   :class:`PartialAttention` over the private KV; then it releases the KV.

The parent-side handle :class:`UserProcess` starts the process, relays the prompt, and gives the
service what it needs to talk to the vault (the channel's service end and the reply) and nothing
else: it keeps no copy of the prompt.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

import torch

from petridish.channel import UserCrashedError, UserEndArgs, UserStalledError, create_channel
from petridish.messages import PrefillReply, PromptRequest, Shutdown, UserFailure
from petridish.model_spec import ModelSpec
from petridish.vault import PromptVault, plain_buffer
from petridish.weights import SharedWeights

ModelSource = ModelSpec | SharedWeights  # load from the checkpoint, or attach to the service's weights


@dataclass(frozen=True)
class UserProcessConfig:
    num_threads: int = 1  # torch threads inside each user process (many share the CPU)
    num_pages: int = 256
    page_size: int = 16
    max_rows: int = 8  # most decoding rows per request (gamma with Prompt Obfuscation)
    start_timeout_s: float = 300.0


@dataclass(frozen=True)
class _Ready:
    pid: int


@dataclass(frozen=True)
class Finish:
    """Service -> user process: the request is over; drop its private KV."""

    request_id: int


class UserProcess:
    """Parent-side handle of one user's process."""

    _ctx = mp.get_context("spawn")

    def __init__(self, spec: ModelSource, num_heads: int, head_dim: int, config: UserProcessConfig | None = None):
        self.spec, self.config = spec, config or UserProcessConfig()
        self.channel, child_end = create_channel(self.config.max_rows, num_heads, head_dim)
        self._control, child_control = self._ctx.Pipe(duplex=True)
        self.process = self._ctx.Process(
            target=_user_main, args=(spec, child_end, child_control, self.config), daemon=True
        )
        self.process.start()
        # Drop our copies of the child's ends so that its death shows up as EOF on ours.
        for conn in (child_end.rx, child_end.tx, child_control):
            conn.close()
        self._ready = False

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def wait_ready(self) -> None:
        """Block until the process has loaded its model (loading is once per process)."""
        if not self._ready:
            msg = self._recv(self.config.start_timeout_s, "loading the model")
            if not isinstance(msg, _Ready):
                raise UserCrashedError(f"user process {self.pid} failed to start: {msg}")
            self._ready = True

    def submit(self, request: PromptRequest) -> None:
        """Relay a private prompt to the process. Nothing of it is kept here."""
        self.wait_ready()
        self._send(request)

    def read_reply(self, timeout: float) -> PrefillReply:
        msg = self._recv(timeout, "prefill")
        if isinstance(msg, UserFailure):
            raise UserRequestError(f"user process {self.pid}, request {msg.request_id}: {msg.message}")
        return msg

    def finish(self, request_id: int) -> None:
        if self.process.is_alive():
            with contextlib.suppress(UserCrashedError):
                self._send(Finish(request_id))

    def request_shutdown(self) -> None:
        """Ask the process to exit without waiting (close many processes in parallel)."""
        if self.process.is_alive():
            with contextlib.suppress(UserCrashedError):
                self._send(Shutdown())

    def close(self, timeout: float = 5.0) -> None:
        """Ask the process to exit, then make sure it did; free the channel."""
        if self.process.is_alive():
            self.request_shutdown()
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)
        self._control.close()
        self.channel.close()
        self.channel.unlink()

    def kill(self) -> None:
        """Stop the process now (used after a stall: it may never answer again)."""
        if self.process.is_alive():
            os.kill(self.pid, signal.SIGKILL)
            self.process.join(5)

    def _send(self, msg: object) -> None:
        try:
            self._control.send(msg)
        except (BrokenPipeError, OSError) as exc:
            raise UserCrashedError(f"user process {self.pid} is gone (exit code {self.process.exitcode})") from exc

    def _recv(self, timeout: float, what: str) -> object:
        try:
            if not self._control.poll(timeout):
                raise UserStalledError(f"user process {self.pid} did not finish {what} within {timeout:.3g} s")
            return self._control.recv()
        except (EOFError, OSError) as exc:
            raise UserCrashedError(
                f"user process {self.pid} exited during {what} (exit code {self.process.exitcode})"
            ) from exc


class UserRequestError(RuntimeError):
    """The user process rejected or failed the request (bad prompt, no room for its KV, ...)."""


def _user_main(spec: ModelSource, channel_args: UserEndArgs, control: Connection, config: UserProcessConfig) -> None:
    """Entry point of the spawned process: load once, then serve requests until shut down."""
    torch.set_num_threads(config.num_threads)
    model, tokenizer = spec.load()
    pool = model.new_kv_pool(config.num_pages, config.page_size)
    channel = channel_args.attach()
    control.send(_Ready(os.getpid()))
    vault: PromptVault | None = None
    with torch.inference_mode():
        while True:
            ready = wait([control, channel.signal])
            if channel.signal in ready:
                try:
                    msg = channel.recv_query()
                except UserCrashedError:
                    return  # the service went away
                channel.send_partial(vault.attend(msg))
                continue
            try:
                cmd = control.recv()
            except EOFError:
                return
            if isinstance(cmd, Shutdown):
                return
            if vault is not None:
                vault.release()
                vault = None
            if isinstance(cmd, PromptRequest):
                vault = _prefill(model, tokenizer, pool, cmd, control)


def _prefill(model, tokenizer, pool, request: PromptRequest, control: Connection) -> PromptVault | None:
    try:
        if request.obfuscation is not None:
            from petridish.obfuscation import obfuscated_buffer

            buffer = obfuscated_buffer(model, tokenizer, pool, request)
        else:
            buffer = plain_buffer(tokenizer, request)
        vault, reply = PromptVault.prefill(model, pool, buffer, request.request_id, request.sampling)
    except Exception as exc:  # report any failure of this request; the process stays usable
        control.send(UserFailure(request.request_id, f"{type(exc).__name__}: {exc}"))
        return None
    control.send(reply)
    return vault
