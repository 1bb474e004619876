"""The walk of one command through the package: which modules of ours a call passes through.

Runs a ``streamsolve`` command in this process under a profile hook and reports, for the
package's own Python code:

- ``modules``: every module of ours that ran a function during the command;
- ``kernel stack``: the call stack (as modules, consecutive repeats folded) the first time a
  wrapper of the C kernels (``core.score_native``, ``core.native``) is entered, with its
  number of module switches — the path from the command line to the kernel a reader has to
  follow (``deepest stack``: the same at the deepest point reached).

Module bodies run by imports are not counted.

Usage (from the repository root)::

    python -m bench.call_walk eval STORE TEXT
    python -m bench.call_walk refine STORE TRAIN --heldout HELD --steps 2

Everything after the command name is passed to ``streamsolve`` unchanged.
"""

from __future__ import annotations

import json
import sys
import threading

PACKAGE = "streamsolve"
#: The modules that call the C kernels (ctypes): a walk "reaches the kernel" there.
KERNEL_WRAPPERS = ("streamsolve.core.score_native", "streamsolve.core.native")


def _module_of(frame) -> str | None:
    name = frame.f_globals.get("__name__", "")
    return name if name == PACKAGE or name.startswith(PACKAGE + ".") else None


CO_OPTIMIZED = 0x1  # set on function code; module and class bodies run without it


def _importing(frame) -> bool:
    """Whether ``frame`` runs on behalf of an import of ours: a module or class body of ours
    is on the stack."""
    while frame is not None:
        if _module_of(frame) and not frame.f_code.co_flags & CO_OPTIMIZED:
            return True
        frame = frame.f_back
    return False


def _stack_modules(frame) -> list[str]:
    """Our modules on the stack from the outermost frame to ``frame``, repeats folded."""
    chain = []
    while frame is not None:
        module = _module_of(frame)
        if module is not None and (not chain or chain[-1] != module):
            chain.append(module)
        frame = frame.f_back
    return chain[::-1]


def walk(argv: list[str]) -> dict:
    """Run ``streamsolve ARGV`` and return the modules it ran and its deepest module stack."""
    from streamsolve import cli

    seen: set[str] = set()
    deepest: list[str] = []
    kernel: list[str] = []

    def profile(frame, event, arg):
        nonlocal deepest, kernel
        if event != "call" or _importing(frame):
            return
        module = _module_of(frame)
        if module is None:
            return
        seen.add(module)
        chain = _stack_modules(frame)
        if len(chain) > len(deepest):
            deepest = chain
        if not kernel and module in KERNEL_WRAPPERS:
            kernel = chain

    threading.setprofile(profile)
    sys.setprofile(profile)
    try:
        code = cli.main(argv)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return {"command": argv[:1], "exit": code, "modules": sorted(seen),
            "module_count": len(seen), "kernel_stack": kernel,
            "kernel_switches": max(len(kernel) - 1, 0), "deepest_stack": deepest,
            "deepest_switches": max(len(deepest) - 1, 0)}


def main() -> int:
    result = walk(sys.argv[1:])
    print(json.dumps(result, indent=1), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
