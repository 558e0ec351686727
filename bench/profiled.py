"""Run a module under cProfile (``--profile``):

    python -m bench.profiled OUT.prof MODULE [ARGS...]

cProfile's default clock (wall time, cheap to read). A CPU-time clock would not charge a
function for the time its process waits for a core on a busy machine, but reading it is a
system call per function call and return: on this VM that multiplies the profiled cost by
six and inflates the functions called most. The profile is written when the module returns
or exits (the processes profiled here exit cleanly on SIGTERM).
"""

from __future__ import annotations

import cProfile
import runpy
import sys


def main() -> None:
    out, module, *args = sys.argv[1:]
    sys.argv = [module, *args]
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        profiler.disable()
        profiler.dump_stats(out)


if __name__ == "__main__":
    main()
