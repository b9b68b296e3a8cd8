#!/usr/bin/env python3
"""Resource gate for the checked-in PTX: ptxas (pip nvcc 13.0) per kernel vs kernels/ptx/limits.json.

Nothing here can run a kernel, but `ptxas -v` tells what a kernel costs on the real chip: registers
(occupancy), spills (local-memory traffic), static shared memory and stack. A kernel change that
spills or grows past its recorded numbers fails here instead of silently slowing down on the GPU.

  python3 tools/cuda/check_ptx.py            # exit 1 on ptxas errors, any spill, or a limit exceeded
  python3 tools/cuda/check_ptx.py --record   # rewrite limits.json with the current numbers
limits.json: {"sm_90": {"<kernel>": {"registers": N, "shared_bytes": N, "stack_bytes": N}}, ...}.
shared_bytes is static __shared__ only; dynamic shared memory is set at launch and not seen here.
"""
import argparse, json, re, subprocess, sys
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ next to the scripts
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_ptx import ROOT, find_cu  # noqa: E402

FIELDS = ("registers", "shared_bytes", "stack_bytes")


def ptxas_stats(ptxas: Path, ptx: Path, arch: str) -> dict:
    """{function: {registers, spill_stores, spill_loads, shared_bytes, stack_bytes, entry}}."""
    r = subprocess.run([str(ptxas), "-v", "--gpu-name", arch, str(ptx), "-o", "/dev/null"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"error: ptxas --gpu-name {arch} failed on {ptx}:\n{r.stderr}{r.stdout}")
    funcs, entry, props = {}, None, None
    blank = lambda: dict(registers=0, spill_stores=0, spill_loads=0, shared_bytes=0, stack_bytes=0, entry=False)
    for line in (r.stderr + r.stdout).splitlines():
        if m := re.search(r"Compiling entry function '([^']+)'", line):
            entry = m[1]
            funcs.setdefault(entry, blank())["entry"] = True
        elif m := re.search(r"Function properties for (\S+)", line):
            props = funcs.setdefault(m[1], blank())  # also non-inlined device functions
        elif m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line):
            props.update(stack_bytes=int(m[1]), spill_stores=int(m[2]), spill_loads=int(m[3]))
        elif m := re.search(r"Used (\d+) registers", line):
            f = funcs[entry]
            f["registers"] = int(m[1])
            if s := re.search(r"(\d+) bytes smem", line):
                f["shared_bytes"] = int(s[1])
            if s := re.search(r"(\d+) bytes cumulative stack size", line):  # includes callees
                f["stack_bytes"] = max(f["stack_bytes"], int(s[1]))
    return funcs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", action="store_true", help="write limits.json from the current numbers")
    ap.add_argument("--dir", type=Path, default=ROOT / "kernels/ptx", help="PTX folder (holds limits.json)")
    args = ap.parse_args()
    ptxas = find_cu() / "bin/ptxas"
    limits_path = args.dir / "limits.json"
    files = sorted(args.dir.glob("*.sm_*.ptx"))
    if not files:
        sys.exit(f"error: no *.sm_XX.ptx in {args.dir}; run: python3 tools/cuda/gen_ptx.py")

    current, errors = {}, []  # current[arch][kernel] = stats
    for ptx in files:
        arch = re.fullmatch(r".+\.(sm_\d+)\.ptx", ptx.name)[1]
        for name, st in ptxas_stats(ptxas, ptx, arch).items():
            if st["spill_stores"] or st["spill_loads"]:
                errors.append(f"{name} ({arch}, {ptx.name}): spills {st['spill_stores']} bytes stores / "
                              f"{st['spill_loads']} bytes loads; must be 0")
            if not st["entry"]:
                continue
            if name in current.setdefault(arch, {}):
                errors.append(f"{name} ({arch}): defined in two PTX files; kernel names must be unique")
            current[arch][name] = dict(st, file=ptx.name)

    recorded = {} if args.record or not limits_path.exists() else json.loads(limits_path.read_text())
    print(f"{'kernel':<32} {'arch':<6} {'regs':>5} {'spill st/ld':>12} {'smem':>7} {'stack':>6}  limits (regs/smem/stack)")
    for arch in sorted(current):
        for name, st in sorted(current[arch].items()):
            lim = recorded.get(arch, {}).get(name)
            lim_txt = "/".join(str(lim[f]) for f in FIELDS) if lim else "-"
            print(f"{name:<32} {arch:<6} {st['registers']:>5} {st['spill_stores']:>5}/{st['spill_loads']:<6} "
                  f"{st['shared_bytes']:>7} {st['stack_bytes']:>6}  {lim_txt}")
            if args.record:
                continue
            if lim is None:
                errors.append(f"{name} ({arch}): not in {limits_path.name}; run check_ptx.py --record")
                continue
            for f in FIELDS:
                if st[f] > lim[f]:
                    errors.append(f"{name} ({arch}): {f} {st[f]} > recorded {lim[f]}")
    for arch, kernels in sorted(recorded.items()):
        for name in sorted(set(kernels) - set(current.get(arch, {}))):
            errors.append(f"{name} ({arch}): in {limits_path.name} but in no PTX file; run check_ptx.py --record")

    if args.record:
        limits = {a: {k: {f: st[f] for f in FIELDS} for k, st in sorted(ks.items())} for a, ks in sorted(current.items())}
        limits_path.write_text(json.dumps(limits, indent=2) + "\n")
        print(f"recorded {limits_path}")
    if errors:
        print("\nFAILED:\n  " + "\n  ".join(errors), file=sys.stderr)
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    main()
