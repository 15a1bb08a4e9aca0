"""Images: bytes in any format/mode Pillow reads -> uint8 RGB [S, S, 3].

Normalisation (documented choice): apply EXIF orientation, convert any mode
(1, L, LA, P, RGBA, CMYK, I;16, I, F, ...) to 8-bit RGB (transparency composited
over white), then resize aspect-preserving so the longer side is S and pad the
shorter side symmetrically with `pad_value` (letterbox). Nothing is cropped, so
a caption about an object at the edge stays true. Decompression bombs are
refused from the header size before any pixel is decoded: `max_image_pixels`
governs, and Pillow's own guard (`Image.MAX_IMAGE_PIXELS`, process-wide) is set
from it, so the flag can go above Pillow's default and every refusal quotes it.
"""
import io
import re
import warnings

import numpy as np
from PIL import Image, ImageOps

from pipelines.media_config import BadInput, MediaConfig, decoder_errors

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT:
        arr = np.asarray(img, dtype=np.uint32)
        scale = 257 if arr.max(initial=0) > 255 else 1
        return Image.fromarray((arr // scale).clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=1.0))
        arr = (arr - lo) / max(hi - lo, 1e-12) * 255.0
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # 1, L, P, CMYK, YCbCr, LAB, HSV


def letterbox(img: Image.Image, size: int, pad_value: int) -> np.ndarray:
    """Aspect-preserving resize to fit `size` x `size`, centred, padded -> uint8 [S, S, 3]."""
    w, h = img.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
    out = np.full((size, size, 3), pad_value, dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = np.asarray(img, dtype=np.uint8)
    return out


def image_from_pil(img: Image.Image, size: int, pad_value: int) -> np.ndarray:
    return letterbox(to_rgb(img), size, pad_value)


def decode_image(data: bytes, cfg: MediaConfig, what: str = "image") -> np.ndarray:
    """Encoded image bytes -> uint8 [cfg.image_size, cfg.image_size, 3]; BadInput on failure."""
    with decoder_errors(what):
        return image_from_pil(_open(data, cfg, what), cfg.image_size, cfg.pad_value)


def _bomb(what: str, cfg: MediaConfig, pixels: str | int) -> BadInput:
    return BadInput("oversize", f"{what}: {pixels} pixels > max_image_pixels {cfg.max_image_pixels}")


def _open(data: bytes, cfg: MediaConfig, what: str) -> Image.Image:
    """Bytes -> a loaded, EXIF-oriented Pillow image; BadInput on failure."""
    Image.MAX_IMAGE_PIXELS = cfg.max_image_pixels  # Pillow refuses above it (warns, then errors at 2x)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w <= 0 or h <= 0:
                raise BadInput("empty", f"{what}: zero-size image {w}x{h}")
            if w * h > cfg.max_image_pixels:
                raise _bomb(what, cfg, f"{w}x{h}")
            if img.format == "JPEG" and max(w, h) > 2 * cfg.image_size:
                img.draft("RGB", (2 * cfg.image_size, 2 * cfg.image_size))  # DCT-domain downscale
            img.load()
            return ImageOps.exif_transpose(img)
    except BadInput:
        raise
    except Image.UnidentifiedImageError:
        raise BadInput("corrupt" if _looks_like_known_container(data) else "unsupported",
                       f"{what}: not an image format Pillow can identify") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        found = re.search(r"\((\d+) pixels\)", str(e))  # Pillow: "Image size (N pixels) exceeds limit ..."
        raise _bomb(what, cfg, found.group(1) if found else "more") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e)
        reason = "truncated" if "truncated" in msg or isinstance(e, EOFError) else "corrupt"
        raise BadInput(reason, f"{what}: {msg}") from None


_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")


def _looks_like_known_container(data: bytes) -> bool:
    """True when the header is a known image magic (so a failure means corrupt, not unsupported)."""
    return data.startswith(_MAGIC)
