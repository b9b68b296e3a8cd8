#!/usr/bin/env python3
"""Runs the shell commands of the README and the docs, so they cannot drift from the code.

Every ```bash / ```sh block in README.md, docs/**/*.md and clients/*/README.md must follow a
marker line saying what CI does with it:

    <!-- ci: run -->                     run the block (bash -e) in the repository root
    <!-- ci: run in clients/node -->     ... in that folder
    <!-- ci: run with serve -->          ... while `vidcascade serve` runs (the block is what a
                                         reader types in a second terminal)
    <!-- ci: run except "bash .ci/test" --> ... without the lines containing the text
    <!-- ci: skip: REASON -->            not run (training for hours, a tool CI cannot install)

A block without a marker fails the check, so a new command is either run or skipped on purpose.
Each block runs in its own process group (background jobs included), killed when it ends; the
outputs it leaves (new files that git ignores, like out.gif) are removed. Usage:

    python3 tools/doc-commands.py [--list] [--only FILE[:LINE]]
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"<!--\s*ci:\s*(.*?)\s*-->")
FENCE = re.compile(r"^```(bash|sh)\s*$")
BLOCK_TIMEOUT_S = 1200
SERVE_READY_URL = "http://127.0.0.1:50053/readyz"


class Block:
    def __init__(self, path, line, marker, text):
        self.path, self.line, self.marker, self.text = path, line, marker, text

    @property
    def where(self):
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def documents():
    yield ROOT / "README.md"
    yield from sorted((ROOT / "docs").rglob("*.md"))
    yield from sorted(ROOT.glob("clients/*/README.md"))


def blocks_of(path):
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        if FENCE.match(lines[i]):
            start = i
            previous = lines[i - 1] if i > 0 else ""
            marker = MARKER.search(previous)
            i += 1
            body = []
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            yield Block(path, start + 1, marker.group(1) if marker else None, "\n".join(body))
        i += 1


def parse_marker(marker):
    """(skip reason or None, folder, with_serve, excluded texts)."""
    if marker.startswith("skip:"):
        return marker[len("skip:"):].strip() or "no reason given", None, False, []
    if not marker.startswith("run"):
        raise ValueError(f"unknown marker `{marker}`")
    rest = marker[len("run"):]
    excluded = re.findall(r'except "([^"]+)"', rest)
    rest = re.sub(r'except "[^"]+"', "", rest)
    folder = re.search(r"\bin (\S+)", rest)
    return None, folder.group(1) if folder else ".", "with serve" in rest, excluded


def ignored_paths():
    """Paths git ignores (outputs like out.gif), top-most folders only."""
    out = subprocess.run(
        ["git", "ls-files", "--others", "--ignored", "--exclude-standard", "--directory"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    return set(out.split())


def remove_new_outputs(before):
    """Removes the ignored files a block left that were not there before it. Untracked files
    that git does not ignore are never touched: they may be someone's work in progress."""
    for entry in sorted(ignored_paths() - before):
        if entry.startswith("target/") or "node_modules" in entry:
            continue
        path = ROOT / entry
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()


def kill_group(process):
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_serve():
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "vidcascade"],
                   cwd=ROOT, check=True)
    serve = subprocess.Popen(
        ["target/release/vidcascade", "serve", "--log", "warn"],
        cwd=ROOT, stdout=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if serve.poll() is not None:
            raise RuntimeError(f"`vidcascade serve` exited with {serve.returncode}")
        try:
            with urllib.request.urlopen(SERVE_READY_URL, timeout=2) as reply:
                if reply.status == 200:
                    return serve
        except OSError:
            pass
        time.sleep(0.5)
    kill_group(serve)
    raise RuntimeError("`vidcascade serve` was not ready within 120 s")


def kept_lines(text, excluded):
    """The lines of `text` but those containing an excluded text (with their `\\`
    continuation lines)."""
    dropping = False
    for line in text.splitlines():
        if not dropping and any(piece in line for piece in excluded):
            dropping = True
        if not dropping:
            yield line
        elif not line.rstrip().endswith("\\"):
            dropping = False


def run_block(block, folder, with_serve, excluded):
    script = "\n".join(kept_lines(block.text, excluded))
    before = ignored_paths()
    serve = start_serve() if with_serve else None
    started = time.monotonic()
    process = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT / folder, start_new_session=True,
    )
    try:
        code = process.wait(timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        code = "timeout"
    finally:
        kill_group(process)
        if serve:
            kill_group(serve)
        remove_new_outputs(before)
    return code, time.monotonic() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the blocks and markers only")
    parser.add_argument("--only", help="run only the blocks of FILE (or FILE:LINE)")
    args = parser.parse_args()

    blocks = [b for path in documents() for b in blocks_of(path)]
    unmarked = [b.where for b in blocks if b.marker is None]
    if unmarked:
        print("shell blocks without a `<!-- ci: run -->` or `<!-- ci: skip: why -->` marker:")
        print("\n".join(f"  {where}" for where in unmarked))
        return 1
    failures = []
    for block in blocks:
        if args.only and not (block.where == args.only or block.where.startswith(args.only + ":")):
            continue
        skip, folder, with_serve, excluded = parse_marker(block.marker)
        if skip or args.list:
            print(f"-- {block.where}: {'skipped: ' + skip if skip else block.marker}")
            continue
        print(f"== {block.where}: {block.marker}", flush=True)
        code, seconds = run_block(block, folder, with_serve, excluded)
        print(f"   exit {code} after {seconds:.0f} s", flush=True)
        if code != 0:
            failures.append(block.where)
    if failures:
        print("failed: " + ", ".join(failures))
        return 1
    print("doc commands: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
