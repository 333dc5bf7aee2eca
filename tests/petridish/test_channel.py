import multiprocessing as mp

import pytest
import torch
from _channel_peers import crash_peer, echo_peer, stall_peer

from petridish.channel import ProtocolError, UserCrashedError, UserStalledError, create_channel
from petridish.messages import QueryMessage

_CTX = mp.get_context("spawn")


def _start(target, max_queries=4, heads=2, dim=8):
    service, child_args = create_channel(max_queries, heads, dim)
    proc = _CTX.Process(target=target, args=(child_args,), daemon=True)
    proc.start()
    child_args.rx.close()  # the parent keeps no copy of the child's ends: EOF must reach us on a crash
    child_args.tx.close()
    return service, proc


def _finish(service, proc):
    service.close()
    service.unlink()
    proc.join(10)
    if proc.is_alive():
        proc.kill()


def test_answers_cross_real_processes_through_shared_memory():
    service, proc = _start(echo_peer)
    try:
        for step in range(3):
            for layer in range(4):
                q = torch.randn(3, 2, 8)
                pos = torch.tensor([5, 9, 11]) + step
                service.send_query(QueryMessage(step, layer, pos, q))
                part = service.recv_partial(timeout=30)
                assert (part.step, part.layer) == (step, layer)
                torch.testing.assert_close(part.out, 2 * q + pos.view(-1, 1, 1).float())
                assert torch.all(part.lse == layer)
    finally:
        _finish(service, proc)


def test_crashed_peer_raises_user_crashed_error_not_a_hang():
    service, proc = _start(crash_peer)
    try:
        service.send_query(QueryMessage(0, 0, torch.zeros(1, dtype=torch.long), torch.zeros(1, 2, 8)))
        with pytest.raises(UserCrashedError):
            service.recv_partial(timeout=60)
    finally:
        _finish(service, proc)


def test_stalled_peer_raises_user_stalled_error_after_timeout():
    service, proc = _start(stall_peer)
    try:
        service.send_query(QueryMessage(0, 0, torch.zeros(1, dtype=torch.long), torch.zeros(1, 2, 8)))
        with pytest.raises(UserStalledError, match="did not answer"):
            service.recv_partial(timeout=0.5)
    finally:
        proc.kill()
        _finish(service, proc)


def test_query_larger_than_the_channel_is_rejected():
    service, args = create_channel(2, 2, 8)
    try:
        with pytest.raises(ProtocolError, match="does not fit"):
            service.send_query(QueryMessage(0, 0, torch.zeros(3, dtype=torch.long), torch.zeros(3, 2, 8)))
        with pytest.raises(ProtocolError, match="without an outstanding query"):
            service.recv_partial(timeout=0.1)
    finally:
        args.rx.close()
        args.tx.close()
        service.close()
        service.unlink()
