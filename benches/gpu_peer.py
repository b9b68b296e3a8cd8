"""The PyTorch peer of the GPU bench: times torch.nn.functional.scaled_dot_product_attention on the
bench's attention shapes (float16 and bfloat16) and a 1 GiB device-to-device copy, the numbers our
flash kernel and copy are judged against (benches/gpu.sh runs it on the GPU machine).

    <gpu-bench> attention-shapes | /opt/torch/.venv/bin/python benches/gpu_peer.py [--dry-run]

stdin: one JSON object per line, {"name","batch","heads","lq","lk","d","bias"}; bias is "none",
"key" (a key padding mask: additive zeros of [batch, 1, 1, lk]) or "head" (an additive
[1, heads, lq, lk] bias), both in the input dtype. stdout: JSON lines {"kind":"sdpa",...,"ms",
"tflops","backend"} (FLOPs = 4 B H Lq Lk d; backend = the SDPA kernel torch picks, when it says)
and {"kind":"torch_copy","bytes","ms","gbps"} (bytes read + written). Times: CUDA events around
each call after a warm-up, median of 20. --dry-run only parses stdin and prints the shapes
(no torch needed).
"""

import json
import statistics
import sys

RUNS = 20
FIELDS = ("name", "batch", "heads", "lq", "lk", "d", "bias")
BACKENDS = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}


def read_shapes(lines):
    shapes = []
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue  # e.g. a "skipped: ..." line
        shape = json.loads(line)
        missing = [f for f in FIELDS if f not in shape]
        if missing:
            raise SystemExit(f"shape without {', '.join(missing)}: {line}")
        if shape["bias"] not in ("none", "key", "head"):
            raise SystemExit(f"unknown bias {shape['bias']!r}: {line}")
        shapes.append(shape)
    return shapes


def time_ms(torch, fn):
    """Median ms of RUNS calls of fn, each between two CUDA events, after 3 warm-up calls."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(RUNS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def sdpa_row(torch, shape, dtype_name, dtype):
    b, h, lq, lk, d = (shape[k] for k in ("batch", "heads", "lq", "lk", "d"))
    q = torch.randn(b, h, lq, d, device="cuda", dtype=dtype)
    k = torch.randn(b, h, lk, d, device="cuda", dtype=dtype)
    v = torch.randn(b, h, lk, d, device="cuda", dtype=dtype)
    mask = None
    if shape["bias"] == "key":
        mask = torch.zeros(b, 1, 1, lk, device="cuda", dtype=dtype)
    elif shape["bias"] == "head":
        mask = torch.randn(1, h, lq, lk, device="cuda", dtype=dtype)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    ms = time_ms(torch, lambda: sdpa(q, k, v, attn_mask=mask))
    try:  # private, but the same choice sdpa makes; absent or changed in some versions
        backend = BACKENDS.get(int(torch._fused_sdp_choice(q, k, v, mask, 0.0, False)))
    except Exception:
        backend = None
    flop = 4 * b * h * lq * lk * d
    return {"kind": "sdpa", **shape, "dtype": dtype_name, "ms": ms, "tflops": flop / ms / 1e9,
            "backend": backend}


def copy_row(torch):
    src = torch.empty(1 << 30, device="cuda", dtype=torch.uint8)
    dst = torch.empty_like(src)
    ms = time_ms(torch, lambda: dst.copy_(src))
    moved = 2 * src.numel()
    return {"kind": "torch_copy", "bytes": moved, "ms": ms, "gbps": moved / ms / 1e6}


def main():
    shapes = read_shapes(sys.stdin)
    if "--dry-run" in sys.argv[1:]:
        for shape in shapes:
            print(json.dumps({"kind": "shape", **shape, "flop": 4 * shape["batch"] * shape["heads"]
                              * shape["lq"] * shape["lk"] * shape["d"]}))
        return
    import torch

    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}; sdpa enabled: flash "
          f"{torch.backends.cuda.flash_sdp_enabled()}, efficient {torch.backends.cuda.mem_efficient_sdp_enabled()}, "
          f"cudnn {torch.backends.cuda.cudnn_sdp_enabled()}, math {torch.backends.cuda.math_sdp_enabled()}",
          file=sys.stderr)
    failed = not shapes
    if not shapes:
        print("no attention shapes on stdin", file=sys.stderr)
    for dtype_name, dtype in (("f16", torch.float16), ("bf16", torch.bfloat16)):
        for shape in shapes:
            try:
                print(json.dumps(sdpa_row(torch, shape, dtype_name, dtype)), flush=True)
            except Exception as err:  # one shape failing (e.g. out of memory) keeps the rest
                print(f"{shape['name']} {dtype_name}: {err}", file=sys.stderr)
                failed = True
            torch.cuda.empty_cache()
    print(json.dumps(copy_row(torch)), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
