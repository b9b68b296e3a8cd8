#!/usr/bin/env python3
"""Checks the installed `vidcascade` package against a running gateway (run by tests/services.rs).

Usage: smoke.py --addr 127.0.0.1:50051 --out DIR. Prints "python package: ok" on success.
"""

import argparse
import os

import numpy as np
from PIL import Image

import io

from vidcascade import (Client, ClipCompleted, Completed, GatewayError, Preview, Progress,
                        StageCompleted, save)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    with Client(args.addr) as client:
        info = client.info()
        shape = info.clip_shape
        events = list(client.generate("a red circle moving left", seed=3, steps=2,
                                      preview_every=1, include_stage_videos=True))
        assert isinstance(events[-1], Completed), events[-1]
        final = events[-1]
        assert final.frames.shape == (shape.frames, shape.height, shape.width, 3), final.frames.shape
        assert final.frames.dtype == np.uint8
        steps = [e.step for e in events if isinstance(e, Progress) and e.stage == "base"]
        assert steps == [1, 2], steps
        assert any(isinstance(e, Preview) for e in events)
        stage_videos = [e for e in events if isinstance(e, StageCompleted) and e.frames is not None]
        assert [e.stage for e in stage_videos] == [s.name for s in info.stages][1:], stage_videos
        assert [t["stage"] for t in final.timings][0] == info.stages[0].name

        gif = os.path.join(args.out, "out.gif")
        save(final.frames, gif, fps=final.fps)
        with Image.open(gif) as image:
            assert image.n_frames == shape.frames and image.size == (shape.width, shape.height)
        save(final.frames, os.path.join(args.out, "frames"))
        assert len(os.listdir(os.path.join(args.out, "frames"))) == shape.frames

        # A two-prompt story: each clip streams its new frames, which add up to the video.
        events = list(client.generate(["a red circle moving left", ("a blue square", 0.5)],
                                      seed=4, steps=2))
        clips = [e for e in events if isinstance(e, ClipCompleted)]
        assert [(c.clip, c.segment, c.segment_completed) for c in clips] == [(0, 0, True), (1, 1, True)]
        assert clips[1].first_frame == len(clips[0].frames)
        story = np.concatenate([c.frames for c in clips])
        assert np.array_equal(story, events[-1].frames), "the clips are not the final video"

        # An init image becomes frame 0.
        png = io.BytesIO()
        Image.new("RGB", (20, 12), (200, 30, 60)).save(png, format="PNG")
        final = list(client.generate("a red circle", seed=5, steps=2, init_image=png.getvalue()))[-1]
        assert np.abs(final.frames[0].astype(int) - [200, 30, 60]).max() <= 2, final.frames[0]

        try:
            list(client.generate("", seed=1))
            raise AssertionError("an empty prompt was accepted")
        except GatewayError as err:
            assert err.code.name == "INVALID_ARGUMENT" and "prompt" in err.message, err
    print("python package: ok")


if __name__ == "__main__":
    main()
