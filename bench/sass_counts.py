"""Instruction counts of Mosaic GPU kernels from their dumped PTX: what docs/BENCHMARKS.md's SASS table (stop 30)
was made with. The GPU machine has no nvdisasm, so the PTX is dumped there and compiled wherever a CUDA 13 ptxas
and cuobjdump are (the pip wheels nvidia-cuda-nvcc and nvidia-cuda-cuobjdump carry them; no GPU is needed):

    # on the GPU machine: the kernels of a stage probe, PTX and ptxas reports in DIR
    MOSAIC_GPU_DUMP_PTXAS=1 MOSAIC_GPU_DUMP_TO=DIR python -m bench.quant_mosaic_stages --shapes 4096x4096 \\
        --methods nf4 --batches 16
    # anywhere: SASS of each kernel_N.ptx in DIR, and the counts
    python -m bench.sass_counts DIR [--cuda-bin PATH] [--ops PRMT,IMAD,LOP3,SHFL,HGMMA,ST,LD]

Per kernel: the ptxas report's registers and stack frame, the count of each SASS opcode named in --ops (the
opcode without its modifiers: ST.E.U16 counts as ST), and the number of prmt in the PTX (which kernel is which:
the NF4 lookup's kernels have hundreds, the no_decode / copy probes none).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

OPCODE = re.compile(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")


def opcode_counts(sass: str) -> Counter:
    """Opcodes (without modifiers or predicates) of cuobjdump -sass text, counted."""
    return Counter(m.group(1) for line in sass.splitlines() if (m := OPCODE.match(line)))


def ptxas_report(text: str) -> dict:
    """Registers, stack frame and spill bytes from ptxas -v output."""
    grab = lambda pat: int(m.group(1)) if (m := re.search(pat, text)) else None  # noqa: E731
    return dict(registers=grab(r"Used (\d+) registers"), stack=grab(r"(\d+) bytes stack frame"),
                spill_stores=grab(r"(\d+) bytes spill stores"), spill_loads=grab(r"(\d+) bytes spill loads"))


def tool(name: str, cuda_bin: str | None) -> str:
    path = str(Path(cuda_bin) / name) if cuda_bin else shutil.which(name)
    if not path or not Path(path).exists():
        sys.exit(f"error: no {name} (CUDA 13: pip install nvidia-cuda-nvcc nvidia-cuda-cuobjdump, then "
                 f"--cuda-bin .../nvidia/cu13/bin)")
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", help="a MOSAIC_GPU_DUMP_TO folder (kernel_N.ptx)")
    p.add_argument("--cuda-bin", default=None, help="folder of ptxas and cuobjdump (default: PATH)")
    p.add_argument("--ops", default="PRMT,IMAD,LOP3,SHFL,HGMMA,ST,LD")
    a = p.parse_args(argv)
    ptxas, cuobjdump = tool("ptxas", a.cuda_bin), tool("cuobjdump", a.cuda_bin)
    ops = [o.strip() for o in a.ops.split(",") if o.strip()]
    kernels = sorted(Path(a.dir).glob("kernel_*.ptx"), key=lambda f: int(f.stem.split("_")[1]))
    if not kernels:
        sys.exit(f"error: no kernel_*.ptx in {a.dir}")
    print("| kernel | ptx prmt | registers | stack B | " + " | ".join(ops) + " |")
    print("|---" * (4 + len(ops)) + "|")
    with tempfile.TemporaryDirectory() as tmp:
        for f in kernels:
            cubin = Path(tmp) / (f.stem + ".cubin")
            r = subprocess.run([ptxas, "-arch=sm_90a", "-O3", "-v", str(f), "-o", str(cubin)], capture_output=True,
                               text=True)
            if r.returncode:
                print(f"| {f.stem} | ptxas failed: {r.stderr.strip().splitlines()[-1][:80]} |")
                continue
            rep = ptxas_report(r.stdout + r.stderr)
            counts = opcode_counts(subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True,
                                                  check=True).stdout)
            print(f"| {f.stem} | {f.read_text().count('prmt')} | {rep['registers']} | {rep['stack']} | "
                  + " | ".join(str(counts[o]) for o in ops) + " |")


if __name__ == "__main__":
    main()
