#!/usr/bin/env python3
"""Compile kernels/cuda/*.cu to checked-in PTX with NVRTC 13.0 (pip wheel, via ctypes; no nvcc).

Why PTX in git: the GPU machine then needs neither NVRTC nor CUDA headers — the binary embeds the
PTX and cudarc loads it. Why NVRTC 13.0 exactly: 13.2 emits PTX ISA 9.2, which ptxas/driver 13.0
reject. Files named `_*.cu` are skipped; `.cuh` files next to them are includes.

  python3 tools/cuda/gen_ptx.py            # (re)write kernels/ptx/<stem>.sm_80.ptx / .sm_90.ptx
  python3 tools/cuda/gen_ptx.py --check    # exit 1 if the checked-in PTX is stale, missing or extra
Options --src DIR / --out DIR override kernels/cuda and kernels/ptx. CU (the pip `nvidia/cu13`
folder) comes from $CU or from the venv that tools/cuda/env.sh creates.
"""
import argparse, ctypes, os, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARCHS = ("80", "90")  # virtual arch compute_XX -> file suffix sm_XX
DEFAULT_VENV_PY = Path(os.environ.get("HOME", "~")) / ".cache/vidcascade-cuda/venv/bin/python"


def find_cu() -> Path:
    if os.environ.get("CU"):
        return Path(os.environ["CU"])
    code = "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13'))"
    for py in (sys.executable, DEFAULT_VENV_PY):
        try:
            out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError):
            continue
        cu = Path(out.stdout.strip())
        if (cu / "lib").is_dir():
            return cu
    sys.exit('error: CUDA wheels not found; run: eval "$(bash tools/cuda/env.sh)"')


def ensure_ld_path(cu: Path) -> None:
    """libnvrtc dlopens libnvrtc-builtins.so.13.0 by bare name, and the loader reads LD_LIBRARY_PATH
    only at process start: so re-exec ourselves with $CU/lib on it (once)."""
    lib = str(cu / "lib")
    cur = os.environ.get("LD_LIBRARY_PATH", "")
    if lib in cur.split(":"):
        return
    if os.environ.get("_GEN_PTX_REEXEC"):
        sys.exit(f"error: {lib} not on LD_LIBRARY_PATH even after re-exec")
    env = dict(os.environ, LD_LIBRARY_PATH=f"{lib}:{cur}" if cur else lib, CU=str(cu), _GEN_PTX_REEXEC="1")
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


class Nvrtc:
    def __init__(self, cu: Path):
        self.lib = ctypes.CDLL(str(cu / "lib/libnvrtc.so.13"))
        self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._ok(self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        if (major.value, minor.value) != (13, 0):
            sys.exit(f"error: loaded NVRTC {major.value}.{minor.value}, need 13.0 (newer PTX ISA is "
                     "rejected by ptxas/driver 13.0); run tools/cuda/env.sh")

    def _ok(self, rc: int, what: str) -> None:
        if rc != 0:
            raise RuntimeError(f"{what}: {self.lib.nvrtcGetErrorString(rc).decode()}")

    def compile(self, src: Path, options: list) -> bytes:
        """PTX for one file; on a compile error prints NVRTC's log and exits 1."""
        prog = ctypes.c_void_p()
        # The program name is the bare file name so the output never depends on the checkout path.
        self._ok(self.lib.nvrtcCreateProgram(ctypes.byref(prog), src.read_bytes(), src.name.encode(),
                                             0, None, None), "nvrtcCreateProgram")
        try:
            opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
            rc = self.lib.nvrtcCompileProgram(prog, len(options), opts)
            size = ctypes.c_size_t()
            self._ok(self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
            log = ctypes.create_string_buffer(size.value)
            self._ok(self.lib.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
            text = log.value.decode(errors="replace").strip()
            if rc != 0:
                sys.exit(f"error: NVRTC failed on {src} ({' '.join(options[:1])}):\n{text}")
            if text:
                print(f"{src.name}: {text}", file=sys.stderr)  # warnings
            self._ok(self.lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
            ptx = ctypes.create_string_buffer(size.value)
            self._ok(self.lib.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
            return ptx.raw.rstrip(b"\0")
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))


def generate(nvrtc: Nvrtc, cu: Path, src_dir: Path) -> dict:
    """{file name: PTX bytes} for every source x arch."""
    out = {}
    for src in sorted(p for p in src_dir.glob("*.cu") if not p.name.startswith("_")):
        for arch in ARCHS:
            opts = [f"--gpu-architecture=compute_{arch}", "-std=c++17", "-default-device",
                    f"--include-path={cu}/include", f"--include-path={src_dir}"]
            out[f"{src.stem}.sm_{arch}.ptx"] = nvrtc.compile(src, opts)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the checked-in PTX, write nothing")
    ap.add_argument("--src", type=Path, default=ROOT / "kernels/cuda")
    ap.add_argument("--out", type=Path, default=ROOT / "kernels/ptx")
    args = ap.parse_args()
    cu = find_cu()
    ensure_ld_path(cu)
    src_dir, out_dir = args.src.resolve(), args.out.resolve()
    if not src_dir.is_dir():
        sys.exit(f"error: no source folder {src_dir}")
    ptx = generate(Nvrtc(cu), cu, src_dir)
    existing = {p.name for p in out_dir.glob("*.sm_*.ptx")} if out_dir.is_dir() else set()

    if args.check:
        bad = [f"stale: {n}" for n in sorted(ptx) if n in existing and (out_dir / n).read_bytes() != ptx[n]]
        bad += [f"missing: {n}" for n in sorted(set(ptx) - existing)]
        bad += [f"extra (no source): {n}" for n in sorted(existing - set(ptx))]
        if bad:
            print("PTX out of date with the kernel sources:\n  " + "\n  ".join(bad)
                  + "\nrun: python3 tools/cuda/gen_ptx.py", file=sys.stderr)
            sys.exit(1)
        print(f"PTX up to date ({len(ptx)} files)")
        return

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in sorted(ptx.items()):
        path = out_dir / name
        if not path.exists() or path.read_bytes() != data:  # untouched files keep their mtime
            path.write_bytes(data)
            print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    for name in sorted(existing - set(ptx)):
        (out_dir / name).unlink()
        print(f"removed {name} (no source)")


if __name__ == "__main__":
    main()
