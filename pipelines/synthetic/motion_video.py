"""Short videos of one shape moving in one of four directions, with questions.

    frames, spec = render_motion(spec)       # [F, S, S, 3] uint8
    question(spec)                           # "which way does the green square move"
    spec.direction                           # "up"

Defaults (demo sizes): 4 frames of 32x32 at 1 frame per second, so the
preprocessing default (1 fps, first frame at t=0, as Gemini samples video)
keeps every frame. The shape travels about half the frame side in a straight
line, so any two sampled frames reveal the direction. Colour and shape come
from the same small world as `shapes.py`; chance on the direction is 1/4.
Videos are MPEG-4 Part 2 (yuv420p, near-lossless quantiser 1-2) in MP4,
written with PyAV by FFmpeg's native single-threaded encoder, so the same
frames give the same bytes. (libx264 was tried first: now and then its output
for identical frames changed with the process's history -- e.g. after eSpeak
had run -- which broke byte-identical reruns.)
"""
import dataclasses
import io
from fractions import Fraction

import av
import numpy as np
from PIL import Image, ImageDraw

from pipelines.synthetic import shapes

# Name -> unit displacement (dx, dy) in image coordinates (y grows downwards).
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
STILL_OPTION = "it stays still"  # the fifth multiple-choice option; never the answer
NUM_CHOICES = 5  # NExT-QA has five candidate answers, a0..a4


@dataclasses.dataclass(frozen=True)
class MotionSpec:
    """One video: the shape, its path (pixels) and the frame layout."""
    colour: str
    shape: str
    direction: str
    rgb: tuple[int, int, int]
    background: tuple[int, int, int]
    start: tuple[float, float]
    end: tuple[float, float]
    size: float
    frame_size: int
    num_frames: int
    fps: int


def sample_motion_spec(rng: np.random.Generator, frame_size: int = 32, num_frames: int = 4,
                       fps: int = 1) -> MotionSpec:
    """A random shape moving in a random direction across the frame."""
    if frame_size < 16 or frame_size % 2:
        raise ValueError(f"frame_size must be even and >= 16 (H.264 needs even sides), got {frame_size}")
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2 to show motion, got {num_frames}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    colour = str(rng.choice(list(shapes.COLOURS)))
    shape = str(rng.choice(shapes.SHAPES))
    direction = str(rng.choice(list(DIRECTIONS)))
    size = frame_size * rng.uniform(0.25, 0.32)
    half = size / 2
    travel = frame_size * rng.uniform(0.45, 0.55)
    dx, dy = DIRECTIONS[direction]
    # Along the motion axis: start so the whole path stays inside the frame.
    lo, hi = half, frame_size - half - travel
    along = rng.uniform(lo, hi)
    across = rng.uniform(half + 1, frame_size - half - 1)
    if dx:
        sx = along if dx > 0 else frame_size - along
        start, end = (sx, across), (sx + dx * travel, across)
    else:
        sy = along if dy > 0 else frame_size - along
        start, end = (across, sy), (across, sy + dy * travel)
    return MotionSpec(colour=colour, shape=shape, direction=direction,
                      rgb=shapes.jitter_rgb(rng, shapes.COLOURS[colour], shapes.COLOUR_JITTER),
                      background=shapes.sample_background(rng),
                      start=(float(start[0]), float(start[1])), end=(float(end[0]), float(end[1])),
                      size=float(size), frame_size=frame_size, num_frames=num_frames, fps=fps)


def render_motion(spec: MotionSpec) -> np.ndarray:
    """Frames [F, S, S, 3] uint8, the shape moving linearly from start to end."""
    frames = []
    for t in np.linspace(0.0, 1.0, spec.num_frames):
        image = Image.new("RGB", (spec.frame_size, spec.frame_size), spec.background)
        cx = spec.start[0] + t * (spec.end[0] - spec.start[0])
        cy = spec.start[1] + t * (spec.end[1] - spec.start[1])
        shapes.draw_shape(ImageDraw.Draw(image), spec.shape, spec.rgb, cx, cy, spec.size)
        frames.append(np.asarray(image))
    return np.stack(frames)


def encode_mp4(frames: np.ndarray, fps: int) -> bytes:
    """MPEG-4/MP4 bytes of frames [F, H, W, 3] uint8 (H and W even), one frame per 1/fps s."""
    _, height, width, _ = frames.shape
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1
        stream.codec_context.qmin, stream.codec_context.qmax = 1, 2
        stream.bit_rate = 2_000_000
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def question(spec: MotionSpec) -> str:
    """E.g. "which way does the green square move" (lower case, no "?", as in NExT-QA and
    ActivityNet-QA, whose readers add the question mark)."""
    return f"which way does the {spec.colour} {spec.shape} move"


def choices(rng: np.random.Generator, spec: MotionSpec) -> tuple[list[str], int]:
    """Five shuffled options (four directions and `STILL_OPTION`) and the answer's index."""
    options = list(DIRECTIONS) + [STILL_OPTION]
    order = rng.permutation(len(options))
    shuffled = [options[i] for i in order]
    return shuffled, shuffled.index(spec.direction)


def generate(rng: np.random.Generator, frame_size: int = 32, num_frames: int = 4,
             fps: int = 1) -> tuple[bytes, MotionSpec]:
    """One video: (MP4 bytes, spec)."""
    spec = sample_motion_spec(rng, frame_size, num_frames, fps)
    return encode_mp4(render_motion(spec), fps), spec
