"""The gateway client: typed events, chunked videos reassembled into numpy frames."""

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import grpc
import numpy as np

from .v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

#: Largest message the client accepts (stage videos and final chunks stay far below it).
MAX_MESSAGE_BYTES = 64 << 20


class GatewayError(Exception):
    """The gateway ended a call with an error status: `code` (a grpc.StatusCode) and its message
    (which names the field and the limit for an invalid request)."""

    def __init__(self, code, message):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


@dataclass
class Accepted:
    request_id: str
    queue_position: int
    seed: int
    clips: int


@dataclass
class StageStarted:
    stage: str
    kind: str
    total_steps: int
    clip: int


@dataclass
class Progress:
    stage: str
    step: int
    total_steps: int
    clip: int


@dataclass
class Preview:
    stage: str
    step: int
    clip: int
    frames: np.ndarray
    fps: float


@dataclass
class StageCompleted:
    stage: str
    clip: int
    #: The stage's video when `include_stage_videos` was asked for, else None.
    frames: Optional[np.ndarray]
    fps: float


@dataclass
class ClipCompleted:
    """A clip of a video of more than one clip (a story) is done: the frames it adds to the final
    video, which start at `first_frame`."""
    clip: int
    segment: int
    #: Whether this clip completes its segment.
    segment_completed: bool
    first_frame: int
    frames: np.ndarray
    fps: float


@dataclass
class Completed:
    frames: np.ndarray
    fps: float
    #: Per stage call: stage, clip, queue_ms, run_ms, steps_run.
    timings: List[dict] = field(default_factory=list)


Event = Union[Accepted, StageStarted, Progress, Preview, StageCompleted, ClipCompleted, Completed]

#: A story: prompts (one clip each) or (prompt, seconds) pairs.
Story = Sequence[Union[str, Tuple[str, float]]]

#: The shortest segment a request can ask for (the smallest positive float32): one clip.
ONE_CLIP = 1.1754944e-38


def _segments(story: Story):
    """The wire segments of a story."""
    segments = []
    for item in story:
        prompt, seconds = (item, ONE_CLIP) if isinstance(item, str) else item
        segments.append(gateway_pb2.Segment(prompt=prompt, seconds=seconds))
    return segments


def _frames(video) -> np.ndarray:
    """A whole wire video as [frames, height, width, 3] uint8."""
    shape = (video.height, video.width, 3)
    return np.stack([np.frombuffer(frame, dtype=np.uint8).reshape(shape) for frame in video.frames])


class _Assembler:
    """Collects the chunks of one video (they arrive in order; the last one completes it)."""

    def __init__(self):
        self.frames: List[bytes] = []

    def push(self, chunk):
        if chunk.first_frame_index != len(self.frames):
            raise GatewayError(grpc.StatusCode.INTERNAL, "video chunks arrived out of order")
        self.frames.extend(chunk.frames)
        if len(self.frames) < chunk.total_frames:
            return None
        whole = common_pb2.Video(width=chunk.width, height=chunk.height, fps=chunk.fps,
                                 total_frames=chunk.total_frames, frames=self.frames)
        self.frames = []
        return whole


def _channel(addr: str, ca: Optional[Union[str, bytes]]):
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    if ca is None:
        return grpc.insecure_channel(addr, options=options)
    pem = ca if isinstance(ca, bytes) else open(ca, "rb").read()
    return grpc.secure_channel(addr, grpc.ssl_channel_credentials(root_certificates=pem), options=options)


def _per_stage(value, stages):
    """`value` for every diffusion stage, or a {stage: value} dict as given."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    return {stage: value for stage in stages}


class Client:
    """A connection to a vidcascade gateway.

    `addr` is `host:port`; `api_key` is sent as `authorization: Bearer <key>`; `ca` (a PEM path
    or bytes) makes the connection TLS, trusting that CA.
    """

    def __init__(self, addr: str = "127.0.0.1:50051", api_key: Optional[str] = None,
                 ca: Optional[Union[str, bytes]] = None):
        self._channel = _channel(addr, ca)
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)
        self._metadata = [("authorization", f"Bearer {api_key}")] if api_key else []

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    def info(self, timeout: float = 10.0):
        """The gateway's `GatewayInfo`: stages, shapes, defaults and limits."""
        try:
            return self._stub.Info(common_pb2.InfoRequest(), timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise GatewayError(err.code(), err.details()) from None

    def generate(self, prompt: Union[str, Story], *, seed: Optional[int] = None,
                 steps: Union[int, Dict[str, int], None] = None,
                 guidance: Union[float, Dict[str, float], None] = None,
                 preview_every: int = 0, include_stage_videos: bool = False,
                 init_image: Optional[bytes] = None,
                 timeout: float = 600.0) -> Iterator[Event]:
        """Generates a video for `prompt`, yielding the typed events as they arrive; the last is
        `Completed`. `prompt` may be a story: a list of prompts (one clip each) or of
        (prompt, seconds) pairs, told as one video whose clips stream as `ClipCompleted`.
        `init_image`: PNG bytes the video starts from. `steps` / `guidance`: one value for every
        diffusion stage or {stage: value}. Raises GatewayError with the gateway's status when the
        call fails."""
        stages = [s.name for s in self.info().stages if s.kind != common_pb2.STAGE_KIND_TEXT_ENCODER]
        overrides: Dict[str, common_pb2.SamplerSettings] = {}
        for stage, value in _per_stage(steps, stages).items():
            overrides.setdefault(stage, common_pb2.SamplerSettings()).steps = value
        for stage, value in _per_stage(guidance, stages).items():
            overrides.setdefault(stage, common_pb2.SamplerSettings()).guidance = value
        story = not isinstance(prompt, str)
        request = gateway_pb2.GenerateRequest(
            prompt="" if story else prompt, segments=_segments(prompt) if story else [],
            init_image_png=init_image, seed=seed, preview_every=preview_every,
            stage_overrides=overrides,
            output=gateway_pb2.OutputOptions(include_stage_videos=include_stage_videos),
        )
        try:
            stream = self._stub.Generate(request, timeout=timeout, metadata=self._metadata)
            yield from self._events(stream)
        except grpc.RpcError as err:
            raise GatewayError(err.code(), err.details()) from None

    def _events(self, stream) -> Iterator[Event]:
        stage_video, clip_video, final_video = _Assembler(), _Assembler(), _Assembler()
        for message in stream:
            kind = message.WhichOneof("event")
            event = getattr(message, kind) if kind else None
            if kind == "accepted":
                yield Accepted(event.request_id, event.queue_position, event.seed, event.clips)
            elif kind == "stage_started":
                name = common_pb2.StageKind.Name(event.kind).removeprefix("STAGE_KIND_").lower()
                yield StageStarted(event.stage, name, event.total_steps, event.clip)
            elif kind == "progress":
                yield Progress(event.stage, event.step, event.total_steps, event.clip)
            elif kind == "preview":
                yield Preview(event.stage, event.step, event.clip, _frames(event.video), event.video.fps)
            elif kind == "stage_completed":
                if not event.HasField("video"):
                    yield StageCompleted(event.stage, event.clip, None, 0.0)
                elif (whole := stage_video.push(event.video)) is not None:
                    yield StageCompleted(event.stage, event.clip, _frames(whole), whole.fps)
            elif kind == "clip_completed":
                if (whole := clip_video.push(event.video)) is not None:
                    yield ClipCompleted(event.clip, event.segment, event.segment_completed,
                                        event.first_frame, _frames(whole), whole.fps)
            elif kind == "completed":
                if (whole := final_video.push(event.video)) is not None:
                    timings = [dict(stage=t.stage, clip=t.clip, queue_ms=t.queue_ms,
                                    run_ms=t.run_ms, steps_run=t.steps_run) for t in event.timings]
                    yield Completed(_frames(whole), whole.fps, timings)
