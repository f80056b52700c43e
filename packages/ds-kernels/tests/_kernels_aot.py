"""Compile the Triton kernels for an H100 (sm_90) on a machine without a GPU, and report the
global-memory instructions of each variant as JSON. Run as a script with TRITON_INTERPRET unset
(the interpreter replaces the kernels with Python functions); exits 77 when Triton's NVIDIA
backend (ptxas) is not installed."""

import json
import re
import sys


def main() -> int:
    from ds_kernels._triton import aot

    if not aot.nvidia_backend_available():
        return 77
    report = {}
    for name in aot.VARIANTS:
        ptx = aot.compile_variant(name, arch=90).asm["ptx"]
        report[name] = sorted(set(re.findall(r"(?:ld|st|atom|red)\.global[.\w]*", ptx)))
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
