"""Python client of the vidcascade gateway.

    from vidcascade import Client, save

    client = Client("127.0.0.1:50051")            # api_key=..., ca="ca.pem" for a secured one
    for event in client.generate("a red circle moving left", seed=1, preview_every=4):
        if isinstance(event, Progress):
            print(event.stage, event.step, "/", event.total_steps)
        elif isinstance(event, Completed):
            save(event.frames, "out.gif", fps=event.fps)

A story is a list of prompts (or of (prompt, seconds) pairs) instead of one prompt: its clips
arrive as `ClipCompleted` events as they finish, and `Completed` brings the whole video.

Events are the gateway's stream, typed, with chunked videos put back together: frames are numpy
arrays of shape [frames, height, width, 3], dtype uint8 (RGB).
"""

from .client import (
    Accepted,
    Client,
    ClipCompleted,
    Completed,
    GatewayError,
    Preview,
    Progress,
    StageCompleted,
    StageStarted,
)
from .media import save

__all__ = [
    "Accepted",
    "Client",
    "ClipCompleted",
    "Completed",
    "GatewayError",
    "Preview",
    "Progress",
    "StageCompleted",
    "StageStarted",
    "save",
]
