"""The host implements exactly the WIT world, and a mismatch names the function."""

import pytest

from pie import host_api, wit


def test_host_implements_exactly_the_wit_functions():
    wit.check_host({iface: set(fns) for iface, fns in host_api.HOST_FUNCTIONS.items()})


def test_wit_package_is_versioned():
    name, version = wit.package()
    assert name == "pie:inferlet" and version.count(".") == 2
    assert wit.instance_name("runtime") == f"pie:inferlet/runtime@{version}"


def test_missing_host_function_is_named():
    implemented = {iface: set(fns) for iface, fns in host_api.HOST_FUNCTIONS.items()}
    implemented["inference"].discard("forward")
    implemented["runtime"].add("teleport")
    with pytest.raises(wit.WitMismatchError, match=r"inference\.forward is declared.*runtime\.teleport"):
        wit.check_host(implemented)
