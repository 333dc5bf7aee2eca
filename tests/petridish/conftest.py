"""Shared fixtures: one Petridish system per tiny model family for the whole session.

Spawning user processes is the slow part of these tests (each loads torch and the model), so the
systems are shared; tests that inspect the service's records reset them first.
"""

import pytest
import torch

from core.testing import tiny_checkpoint
from petridish.model_spec import ModelSpec
from petridish.service_process import ServiceConfig
from petridish.system import Petridish

_SYSTEMS: dict[str, Petridish] = {}


def spec_for(family: str) -> ModelSpec:
    """A tiny random checkpoint on disk: every process loads the same weights from it."""
    return ModelSpec(source=str(tiny_checkpoint(family, seed=0)), attention_backend="torch")


def system_for(family: str) -> Petridish:
    """Two users per family; the llama system has two more that the fault test may kill."""
    if family not in _SYSTEMS:
        config = ServiceConfig(stall_timeout_s=3.0, record_messages=True)
        users = 4 if family == "llama" else 2
        _SYSTEMS[family] = Petridish(spec_for(family), num_users=users, service_config=config, keep_logits=True)
    return _SYSTEMS[family]


@pytest.fixture(scope="session", autouse=True)
def _one_thread_and_close_systems():
    """One torch thread here, like the user processes: on a busy 2-core machine more OpenMP threads
    than free cores spin and slow everything down. Restored, and the systems closed, at the end."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    for pd in _SYSTEMS.values():
        pd.close()


@pytest.fixture(params=["llama", "gemma3"])
def system(request) -> Petridish:
    return system_for(request.param)


@pytest.fixture
def llama_system() -> Petridish:
    return system_for("llama")


@pytest.fixture(scope="session")
def llama_spec() -> ModelSpec:
    return spec_for("llama")
