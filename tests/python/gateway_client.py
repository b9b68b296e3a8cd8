#!/usr/bin/env python3
"""Drives a running vidcascade gateway from Python with stubs generated from proto/.

Usage: gateway_client.py --addr 127.0.0.1:50051 --proto proto --out /tmp/stubs

Generates the grpcio stubs with grpc_tools.protoc, asks Gateway.Info, runs one generation
(checking the event order and the final video's shape against Info), and checks that an
invalid request is INVALID_ARGUMENT naming the field. Prints "python client: ok" on success.
"""

import argparse
import glob
import os
import sys

import grpc
from grpc_tools import protoc


def generate_stubs(proto_dir, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    files = sorted(glob.glob(os.path.join(proto_dir, "vidcascade", "v1", "*.proto")))
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    code = protoc.main(
        ["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out_dir}",
         f"--grpc_python_out={out_dir}", *files]
    )
    if code != 0:
        sys.exit(f"protoc failed with {code}")
    sys.path.insert(0, out_dir)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    parser.add_argument("--proto", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--prompt", default="a red circle moving left on a black background")
    args = parser.parse_args()

    generate_stubs(args.proto, args.out)
    from vidcascade.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

    channel = grpc.insecure_channel(args.addr)
    gateway = gateway_pb2_grpc.GatewayStub(channel)
    info = gateway.Info(common_pb2.InfoRequest(), timeout=10)
    stage_names = [stage.name for stage in info.stages]
    print(f"model {info.model.name}: stages {stage_names}, clip {info.clip_shape}")

    request = gateway_pb2.GenerateRequest(prompt=args.prompt, seed=5, preview_every=1)
    events = list(gateway.Generate(request, timeout=120))
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds[0] == "accepted", kinds[:3]
    assert kinds[-1] == "completed", kinds[-3:]
    started = [e.stage_started.stage for e in events if e.HasField("stage_started")]
    assert started == stage_names, (started, stage_names)
    assert any(k == "preview" for k in kinds), "no previews"
    frames = []
    for event in events:
        if event.HasField("completed"):
            chunk = event.completed.video
            assert chunk.first_frame_index == len(frames)
            frames.extend(chunk.frames)
    final = [e.completed.video for e in events if e.HasField("completed")][-1]
    shape = info.clip_shape
    assert len(frames) == shape.frames, (len(frames), shape.frames)
    assert (final.width, final.height) == (shape.width, shape.height)
    assert all(len(f) == shape.width * shape.height * 3 for f in frames)
    timings = [e.completed.timings for e in events if e.HasField("completed")][-1]
    print("timings:", ", ".join(f"{t.stage} {t.run_ms} ms" for t in timings))

    try:
        list(gateway.Generate(gateway_pb2.GenerateRequest(prompt=""), timeout=10))
        sys.exit("an empty prompt was accepted")
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
        assert "prompt" in err.details(), err.details()

    print("python client: ok")


if __name__ == "__main__":
    main()
