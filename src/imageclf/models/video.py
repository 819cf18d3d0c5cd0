"""Probe a video and decode the frames a job samples from it (PyAV, no TensorFlow).

The API probes an upload (to refuse what is not a video, or too long, before
accepting it and to know how many frames the job will have); the decoder worker
decodes the sampled frames, far from the model's process. Frames are sampled by
time: `fps` per second, or every n-th frame (by the stream's average frame rate).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av

from imageclf.models.images import covering_size, target_size

#: Seeking restarts decoding at the previous keyframe (x264 puts them up to 250 frames apart), so for
#: nearby targets decoding forward is cheaper: measured on the shared 720p clips at 1 frame/s, seeking
#: to every target cost 104-150 ms a sampled frame, decoding forward 43-50 ms.
_SEEK_WHEN_AHEAD_S = 10.0


class VideoDecodeError(ValueError):
    """The file is not a video PyAV can decode."""


@dataclass(frozen=True)
class VideoInfo:
    duration_s: float
    frame_rate: float
    width: int
    height: int
    codec: str


def probe(path: str) -> VideoInfo:
    """What the first video stream of `path` is, or VideoDecodeError saying why it is not usable."""
    try:
        with av.open(path, metadata_errors="ignore") as container:
            if not container.streams.video:
                raise VideoDecodeError("the file has no video stream")
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 0)
            duration = _duration_s(container, stream)
            ctx = stream.codec_context
            if duration <= 0 or rate <= 0 or not ctx.width or not ctx.height:
                raise VideoDecodeError("the video stream has no duration, frame rate or size")
            return VideoInfo(duration, rate, ctx.width, ctx.height, ctx.name)
    except av.FFmpegError as exc:
        raise VideoDecodeError(f"not a video this service can decode ({exc.strerror or exc})") from None


def _decoded_from(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                  t: float) -> Iterator[av.VideoFrame]:
    """The stream's frames from the keyframe at or before `t` (seconds on the stream's clock) on."""
    base = stream.time_base or Fraction(1, 1000)
    container.seek(int(t / base), stream=stream, backward=True, any_frame=False)
    return container.decode(stream)


def _at_or_after(frames: Iterator[av.VideoFrame], t: float, base: Fraction, start: float) -> av.VideoFrame | None:
    """The first of `frames` shown at `t` or later (None: the stream ends before)."""
    for frame in frames:
        if frame.pts is not None and float(frame.pts * base) - start >= t:
            return frame
    return None


def _duration_s(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return 0.0


def sample_times(info: VideoInfo, fps: float | None, every_n_frames: int | None, max_frames: int) -> list[float]:
    """The times (seconds) of the frames to classify: `fps` per second (default 1) or every n-th frame."""
    step = every_n_frames / info.frame_rate if every_n_frames else 1.0 / (fps or 1.0)
    count = min(max_frames, math.ceil(info.duration_s / step - 1e-9))
    return [round(i * step, 6) for i in range(count)]


@dataclass(frozen=True)
class Frame:
    t: float          # presentation time in seconds
    index: int        # frame number, from the time and the average frame rate
    pixels: bytes     # H×W×3 uint8 RGB, like imageclf.models.images.decode_to_pixels


def decode_frames(path: str, times: list[float], frame_rate: float, size: int | tuple[int, int],
                  resize: str = "squash") -> Iterator[Frame]:
    """The frame shown at each of `times` (ascending) as model input, seeking only when a target is far ahead.

    Frames are scaled by FFmpeg (swscale, area averaging) straight to the input size (a side or
    (H, W)) as RGB, or for "center_crop" to the size that covers it, then the centre is cut out:
    1-1.5 ms a 720p frame against 10-19 ms for a full-size Pillow image resized afterwards.

    Stops early at the end of the stream (a shorter video than its header says).
    Raises VideoDecodeError if the stream turns out to be corrupt.
    """
    if not times:
        return
    height, width = target_size(size)
    try:
        with av.open(path, metadata_errors="ignore") as container:
            stream = container.streams.video[0]
            # Slice threads, not frame threads: a job's video is decoded by several processes at once, one stretch
            # each, and frame threads refill their pipeline after every seek (measured, 720p at 2 fps: one decoder
            # process 95 frames/s with SLICE, 73 with AUTO, 65 with none; two 112, 96, 109).
            stream.thread_type = "SLICE"
            base = stream.time_base or Fraction(1, 1000)
            start = float((stream.start_time or 0) * base)
            frames: Iterator[av.VideoFrame] | None = None
            last_t = -math.inf
            half_frame = 0.5 / frame_rate
            seekable = True
            for target in times:
                sought = frames is None or (seekable and target - last_t > _SEEK_WHEN_AHEAD_S)
                if sought:
                    frames = _decoded_from(container, stream, start + target if seekable else start)
                assert frames is not None
                for frame in frames:
                    pts = frame.pts
                    if pts is None:
                        continue
                    if sought and frame.is_corrupt and seekable:
                        # The seek landed where decoding cannot start (a file without a keyframe index before
                        # the target): read this file from its start, and never seek in it again.
                        seekable, frames = False, _decoded_from(container, stream, start)
                        found = _at_or_after(frames, target - half_frame, base, start)
                        if found is None or found.pts is None:
                            return
                        frame, pts = found, found.pts
                    sought = False
                    last_t = float(pts * base) - start
                    if last_t >= target - half_frame:
                        yield Frame(round(last_t, 6), round(last_t * frame_rate),
                                    _scaled(frame, height, width, resize))
                        break
                else:
                    return
    except av.FFmpegError as exc:
        raise VideoDecodeError(f"the video is corrupt ({exc.strerror or exc})") from None


def _scaled(frame: av.VideoFrame, height: int, width: int, resize: str) -> bytes:
    """The frame as row-major H×W×3 RGB bytes of the model's input size (to_ndarray may pad rows)."""
    import numpy as np

    cover_w, cover_h = covering_size(frame.width, frame.height, (height, width), resize)
    rgb = frame.reformat(width=cover_w, height=cover_h, format="rgb24", interpolation="AREA").to_ndarray()
    top, left = (cover_h - height) // 2, (cover_w - width) // 2
    return np.ascontiguousarray(rgb[top:top + height, left:left + width]).tobytes()
