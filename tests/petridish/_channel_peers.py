"""User-process stand-ins for the channel tests (module level, so a spawned child can import them)."""

from __future__ import annotations

import os
import time

import torch

from petridish.channel import UserCrashedError, UserEndArgs
from petridish.messages import PartialAttention


def echo_peer(args: UserEndArgs) -> None:
    """Answer each query with out = 2 q + position and lse = layer, until the service goes away."""
    end = args.attach()
    while True:
        try:
            msg = end.recv_query()
        except UserCrashedError:
            return
        out = 2 * msg.q + msg.positions.view(-1, 1, 1).float()
        lse = torch.full(msg.q.shape[:2], float(msg.layer))
        end.send_partial(PartialAttention(msg.step, msg.layer, out, lse))


def crash_peer(args: UserEndArgs) -> None:
    """Receive one query and die without answering (a crashed user process)."""
    end = args.attach()
    end.recv_query()
    os._exit(3)


def stall_peer(args: UserEndArgs) -> None:
    """Receive one query and never answer (a stalled user process)."""
    end = args.attach()
    end.recv_query()
    time.sleep(60)
