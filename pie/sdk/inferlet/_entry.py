"""Bind an inferlet's ``main(args) -> str`` to the exported ``run`` of the WIT world."""

import traceback

import wit_world
from componentize_py_types import Err
from wit_world.imports import runtime


def make_world(main):
    class WitWorld(wit_world.WitWorld):
        def run(self) -> str:
            try:
                result = main(list(runtime.get_arguments()))
            except MemoryError:
                # Say so plainly: the host reports it as "exceeded its memory limit".
                raise Err("MemoryError: the inferlet ran out of linear memory") from None
            except Err:
                raise
            except BaseException as e:
                raise Err("".join(traceback.format_exception(e))[-4000:]) from None
            return "" if result is None else str(result)

    return WitWorld
