"""Turns one GPU run's JSON lines into report.md (benches/gpu.sh calls it on the GPU machine; plain
python3, no dependencies): our attention against PyTorch's SDPA, copy bandwidth, the fused sampler
against copy bandwidth, stage steps and generation on GPU and CPU, and the scaling table, each
next to its issue target. A kind that is missing gives a "not measured" row, never a crash.

    python3 benches/gpu_report.py OUT_DIR     # reads OUT_DIR/gpu-bench.jsonl, torch.jsonl, summary.txt
"""

import json
import os
import re
import sys

ATTENTION_TARGET = 0.5  # of SDPA's TFLOP/s
SAMPLER_TARGET = 0.7  # of copy bandwidth
GENERATE_TARGET = 20.0  # x a 2-core CPU


def load(path):
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.startswith("{"):
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass  # a line cut off by a timeout
    return rows


def kind(rows, name):
    return [r for r in rows if r.get("kind") == name]


def num(x, digits=2):
    return "—" if x is None else f"{x:.{digits}f}"


def ratio(a, b):
    return a / b if a is not None and b else None


def pct(x, target=None):
    if x is None:
        return "—"
    mark = "" if target is None else (" ✓" if x >= target else " ✗")
    return f"{100 * x:.0f} %{mark}"


def table(header, rows, columns):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    if not rows:
        rows = [["not measured"] + [""] * (columns - 1)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out + [""]


def attention(ours, torch):
    ours = {(r["name"], r["dtype"]): r for r in kind(ours, "attention")}
    peer = {(r["name"], r["dtype"]): r for r in kind(torch, "sdpa")}
    keys = list(dict.fromkeys([*ours, *peer]))  # bench order first, then any shape only torch has
    rows = []
    for key in keys:
        o, p = ours.get(key, {}), peer.get(key, {})
        shape = o or p
        rows.append([key[0], key[1], f"{shape['batch']}x{shape['heads']}x{shape['lq']}x{shape['lk']}x{shape['d']}",
                     num(o.get("ms"), 3) if o else "not measured", num(o.get("tflops"), 1),
                     num(p.get("ms"), 3) if p else "not measured", num(p.get("tflops"), 1),
                     p.get("backend") or "—", pct(ratio(o.get("tflops"), p.get("tflops")), ATTENTION_TARGET)])
    return ["## Attention (flash kernel vs PyTorch SDPA)", "",
            f"Target: >= {ATTENTION_TARGET:.0%} of SDPA's TFLOP/s. FLOPs = 4 B H Lq Lk d. Ours: host-timed "
            "median of 20 with a sync each; SDPA: CUDA events, median of 20.", ""] + table(
        ["shape", "dtype", "BxHxLqxLkxd", "ours ms", "ours TFLOP/s", "SDPA ms", "SDPA TFLOP/s", "SDPA backend",
         "ours / SDPA"], rows, 9)


def copy_gbps(ours, torch):
    o, t = kind(ours, "copy"), kind(torch, "torch_copy")
    return (o[0]["gbps"] if o else None), (t[0]["gbps"] if t else None)


def copy(ours, torch):
    o, t = copy_gbps(ours, torch)
    rows = [] if o is None and t is None else [[num(o, 0), num(t, 0), pct(ratio(o, t))]]
    return ["## Copy bandwidth (device to device, bytes read + written)", ""] + table(
        ["ours GB/s", "torch GB/s", "ours / torch"], rows, 3)


def sampler(ours, torch):
    o, t = copy_gbps(ours, torch)
    ceiling, which = (o, "ours") if o is not None else (t, "torch's")
    rows = [[r["name"], r["samples"], r["elements"], num(r["ms"], 3), num(r["gbps"], 0),
             pct(ratio(r["gbps"], ceiling), SAMPLER_TARGET)] for r in kind(ours, "sampler")]
    return ["## Fused sampler step", "",
            f"Target: >= {SAMPLER_TARGET:.0%} of copy bandwidth ({which} copy: {num(ceiling, 0)} GB/s).", ""] + table(
        ["case", "samples", "elements", "ms", "GB/s", "% of copy"], rows, 6)


def stage_steps(ours):
    ms = {}
    for r in kind(ours, "stage_step"):
        where = "cpu" if r["device"] == "cpu" else r["dtype"]
        ms.setdefault(r["stage"], {})[where] = r["ms"]
    rows = []
    for stage, m in ms.items():
        f16, f32, cpu = m.get("f16"), m.get("f32"), m.get("cpu")
        rows.append([stage, num(f16), num(f32), num(cpu), num(ratio(cpu, f16), 1), num(ratio(cpu, f32), 1)])
    return ["## Stage steps (one denoising step, ms)", ""] + table(
        ["stage", "GPU f16", "GPU f32", "CPU f32", "f16 speedup", "f32 speedup"], rows, 6)


def cli_seconds(out_dir):
    """The CLI's own "in X.XX s" line per run, from the generate logs."""
    found = {}
    for device in ("cuda", "cpu"):
        path = os.path.join(out_dir, f"generate-{device}.log")
        if os.path.exists(path):
            with open(path, errors="replace") as f:
                hits = re.findall(r"wrote .* in ([0-9.]+) s", f.read())
            if hits:
                found[device] = float(hits[-1])
    return found


def generate(ours, out_dir, cores):
    runs = [("bench", r["device"], r["dtype"], r["seconds"]) for r in kind(ours, "generate")]
    runs += [("CLI, with loading", device, "f16" if device == "cuda" else "f32", seconds)
             for device, seconds in cli_seconds(out_dir).items()]
    rows = []
    for source, device, dtype, seconds in runs:
        cpu = next((s for src, dev, _, s in runs if src == source and dev == "cpu"), None)
        x = None if device == "cpu" else ratio(cpu, seconds)
        check = "—" if x is None else ("✓" if x >= GENERATE_TARGET else "✗")
        rows.append([source, device, dtype, num(seconds, 3), "—" if device == "cpu" else num(x, 1), check])
    note = (f"Target: GPU >= {GENERATE_TARGET:.0f}x a 2-core CPU. The CPU rows here ran on this machine's "
            f"{cores or 'many'} cores, so the speedup shown understates the one against 2 cores.")
    return ["## Generation end to end (seconds)", "", note, ""] + table(
        ["run", "device", "dtype", "seconds", "GPU vs CPU", f">= {GENERATE_TARGET:.0f}x"], rows, 6)


def scaling(ours):
    rows = [[r["label"], r["stage"], r["device"], r["dtype"], f"{r['frames']}x{r['height']}x{r['width']}",
             num(r["ms"], 1), num(r["memory_bytes"] / 2**20, 0) if r.get("memory_bytes") is not None else "—"]
            for r in kind(ours, "scaling")]
    return ["## Scaling (one guided U-Net forward, random weights)", "",
            "Memory: the GPU's used memory after the step (whole device), GPU rows only.", ""] + table(
        ["label", "stage", "device", "dtype", "frames x height x width", "ms", "memory MiB"], rows, 7)


def read_text(path):
    if not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        return f.read().strip()


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    out_dir = sys.argv[1]
    ours = load(os.path.join(out_dir, "gpu-bench.jsonl"))
    torch = load(os.path.join(out_dir, "torch.jsonl"))
    machine = read_text(os.path.join(out_dir, "nvidia-smi.txt"))
    cores = re.search(r"cpu cores: (\d+)", machine)
    steps = read_text(os.path.join(out_dir, "summary.txt"))
    lines = ["# GPU report", ""]
    if machine:
        lines += ["```", machine, "```", ""]
    sections = [lambda: attention(ours, torch), lambda: copy(ours, torch), lambda: sampler(ours, torch),
                lambda: stage_steps(ours), lambda: generate(ours, out_dir, cores and cores.group(1)),
                lambda: scaling(ours)]
    for section in sections:
        try:
            lines += section()
        except Exception as err:  # a line without a field the table needs: say so, keep the rest
            lines += [f"(a section could not be rendered: {err!r})", ""]
    if steps:
        lines += ["## Steps", "", "```", steps, "```", ""]
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
