"""Images of one coloured shape on a plain background, with a caption.

    spec = sample_shape_spec(rng, image_size=32)
    caption(spec)  # e.g. "a red circle on the left"

The world is deliberately small so a tiny model can learn it in minutes:
4 colours x 3 shapes x 3 positions (36 captions). What varies besides the
caption: the shape's size (30-40% of the side), a few pixels of jitter around
the position's centre, and a small jitter of the shape and background colours.
Captions always read "a <colour> <shape> <position phrase>", so an evaluator can
parse colour and shape back with `parse_caption`.
"""
import dataclasses
import io

import numpy as np
from PIL import Image, ImageDraw

# Name -> nominal RGB. Saturated colours on a dark-grey background stay distinct
# after JPEG/H.264 chroma subsampling.
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
}
SHAPES = ("circle", "square", "triangle")
# Name -> (caption phrase, horizontal centre as a fraction of the width).
POSITIONS = {
    "left": ("on the left", 1 / 6),
    "middle": ("in the middle", 1 / 2),
    "right": ("on the right", 5 / 6),
}
COLOUR_JITTER = 15      # +- per RGB channel
BACKGROUND_RANGE = (30, 70)  # grey level of the background


@dataclasses.dataclass(frozen=True)
class ShapeSpec:
    """Everything needed to draw one image; `cx, cy, size` in pixels."""
    colour: str
    shape: str
    position: str
    rgb: tuple[int, int, int]
    background: tuple[int, int, int]
    cx: float
    cy: float
    size: float


def jitter_rgb(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    """`rgb` with each channel moved by up to +-amount, clipped to 0..255."""
    delta = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(v) for v in np.clip(np.asarray(rgb) + delta, 0, 255))


def sample_background(rng: np.random.Generator) -> tuple[int, int, int]:
    grey = int(rng.integers(BACKGROUND_RANGE[0], BACKGROUND_RANGE[1] + 1))
    return jitter_rgb(rng, (grey, grey, grey), 6)


def sample_shape_spec(rng: np.random.Generator, image_size: int) -> ShapeSpec:
    """A random shape: uniform colour, shape and position, jittered size and place."""
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16 pixels to draw a recognisable shape, got {image_size}")
    colour = str(rng.choice(list(COLOURS)))
    shape = str(rng.choice(SHAPES))
    position = str(rng.choice(list(POSITIONS)))
    size = image_size * rng.uniform(0.30, 0.40)
    jitter = image_size / 16
    cx = image_size * POSITIONS[position][1] + rng.uniform(-jitter, jitter)
    cy = image_size / 2 + rng.uniform(-2 * jitter, 2 * jitter)
    # Keep the whole shape inside the frame.
    half = size / 2
    cx = float(np.clip(cx, half, image_size - half))
    cy = float(np.clip(cy, half, image_size - half))
    return ShapeSpec(colour=colour, shape=shape, position=position,
                     rgb=jitter_rgb(rng, COLOURS[colour], COLOUR_JITTER),
                     background=sample_background(rng), cx=cx, cy=cy, size=float(size))


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, rgb: tuple[int, int, int],
               cx: float, cy: float, size: float) -> None:
    """Draws `shape` of side/diameter `size` centred at (cx, cy)."""
    h = size / 2
    if shape == "circle":
        draw.ellipse((cx - h, cy - h, cx + h, cy + h), fill=rgb)
    elif shape == "square":
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=rgb)
    elif shape == "triangle":
        draw.polygon([(cx, cy - h), (cx - h, cy + h), (cx + h, cy + h)], fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}; use one of {SHAPES}")


def render(spec: ShapeSpec, image_size: int) -> Image.Image:
    """The RGB image of `spec`."""
    image = Image.new("RGB", (image_size, image_size), spec.background)
    draw_shape(ImageDraw.Draw(image), spec.shape, spec.rgb, spec.cx, spec.cy, spec.size)
    return image


def caption(spec: ShapeSpec) -> str:
    """E.g. "a red circle on the left"."""
    return f"a {spec.colour} {spec.shape} {POSITIONS[spec.position][0]}"


def parse_caption(text: str) -> tuple[str | None, str | None]:
    """(colour, shape) named in `text` (first of each), None where absent."""
    words = text.lower().replace(".", " ").replace(",", " ").split()
    colour = next((w for w in words if w in COLOURS), None)
    shape = next((w for w in words if w in SHAPES), None)
    return colour, shape


def png_bytes(image: Image.Image) -> bytes:
    """Lossless PNG; Pillow writes no timestamps, so equal images give equal bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def generate(rng: np.random.Generator, image_size: int = 32) -> tuple[bytes, str, ShapeSpec]:
    """One example: (PNG bytes, caption, spec)."""
    spec = sample_shape_spec(rng, image_size)
    return png_bytes(render(spec, image_size)), caption(spec), spec
