"""How many embedding slots (placeholder tokens) each media item gets.

Pure Python, no dependencies: pipelines/ writes exactly this many placeholder
ids per item, tasks/ budgets rows with it, and model/ mirrors these formulas
(a test cross-checks them). Keep the three functions the single source of truth.

    image  K = (image_size / patch_size) ** 2
    video  K = n_frames * (frame_size / patch_size) ** 2   (each frame is an image)
    audio  K = ceil(n_frames / subsampling)                 (conv subsampler, 4x)
"""
import math

AUDIO_SUBSAMPLING = 4  # the audio encoder's conv front end downsamples time by 4


def _patches_per_side(size: int, patch_size: int, what: str) -> int:
    if patch_size <= 0 or size <= 0:
        raise ValueError(f"{what}: size ({size}) and patch_size ({patch_size}) must be positive")
    if size % patch_size:
        raise ValueError(
            f"{what}: size {size} is not a multiple of patch_size {patch_size}; "
            f"use e.g. size {size - size % patch_size or patch_size}")
    return size // patch_size


def image_slots(image_size: int, patch_size: int) -> int:
    """Slots for one square image of side `image_size` cut into `patch_size` patches."""
    return _patches_per_side(image_size, patch_size, "image") ** 2


def video_slots(n_frames: int, frame_size: int, patch_size: int) -> int:
    """Slots for a video of `n_frames` sampled square frames of side `frame_size`."""
    if n_frames < 0:
        raise ValueError(f"video: n_frames must be >= 0, got {n_frames}")
    return n_frames * _patches_per_side(frame_size, patch_size, "video frame") ** 2


def audio_slots(n_frames: int, subsampling: int = AUDIO_SUBSAMPLING) -> int:
    """Slots for `n_frames` log-mel frames after the encoder's time subsampling."""
    if n_frames < 0 or subsampling <= 0:
        raise ValueError(f"audio: need n_frames >= 0 and subsampling > 0, got {n_frames}, {subsampling}")
    return math.ceil(n_frames / subsampling)
