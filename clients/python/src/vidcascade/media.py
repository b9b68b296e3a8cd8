"""Writing frames to files: GIF and PNG frames with Pillow, MP4 with the `mp4` extra."""

import os

import numpy as np


def save(frames, path, fps=8.0):
    """Writes `frames` ([frames, height, width, 3] uint8) to `path`: `.gif`, `.mp4` (needs
    `pip install vidcascade[mp4]`), or a folder of `frame-0000.png`... (no extension)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be [frames, height, width, 3] uint8, got {frames.shape} {frames.dtype}")
    if len(frames) == 0:
        raise ValueError("no frames to save")
    extension = os.path.splitext(str(path))[1].lower()
    if extension == ".gif":
        from PIL import Image

        images = [Image.fromarray(frame) for frame in frames]
        duration = max(1, round(1000 / fps))
        images[0].save(path, save_all=True, append_images=images[1:], duration=duration, loop=0)
    elif extension == ".mp4":
        try:
            import imageio.v2 as imageio
        except ImportError as err:
            raise RuntimeError("MP4 output needs the mp4 extra: pip install 'vidcascade[mp4]'") from err
        imageio.mimwrite(path, list(frames), fps=fps, macro_block_size=1)
    elif extension == "":
        from PIL import Image

        os.makedirs(path, exist_ok=True)
        for index, frame in enumerate(frames):
            Image.fromarray(frame).save(os.path.join(path, f"frame-{index:04d}.png"))
    else:
        raise ValueError(f"unknown video format {extension!r}: use .gif, .mp4 or a folder")
