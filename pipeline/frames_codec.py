"""JPEG frames (``vidret decode --frame-format jpeg``): one JPEG image per frame in the ``frames`` column.

Decode's worker processes encode them, encode's frame readers decode them. Pillow's libjpeg-turbo
does both on a CPU: on 224 x 224 frames it encoded in 0.4 ms and decoded in 0.26 ms a frame, against
0.7 and 0.55 ms for ``torchvision.io`` (which also leaves channels first, one more copy to undo).
With the model on a GPU, torchvision's nvJPEG decoder decodes a whole batch there.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class JpegFrames:
    """A video's frames as JPEG images, as a decode worker hands them to the writer."""

    images: list[bytes]  # one per frame, in order
    shape: tuple[int, int, int, int]  # of the frames they encode: T x H x W x 3


def encode_jpeg(frames: np.ndarray, quality: int) -> JpegFrames:
    """One baseline JPEG per frame of ``frames`` (T x H x W x 3, uint8 RGB), at libjpeg's ``quality``
    (1-100) with its default 4:2:0 chroma. Padding frames (all zeros) are encoded too, so that every
    row keeps one image per frame; they decode to zeros again."""
    images = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
        images.append(buffer.getvalue())
    return JpegFrames(images, frames.shape)


def stored_frames(frames: np.ndarray | JpegFrames) -> bytes | list[bytes]:
    """The ``frames`` column's value: the raw array's bytes (C order), or the JPEG images."""
    return frames.images if isinstance(frames, JpegFrames) else frames.tobytes()


def decode_jpeg(images: Sequence, out: np.ndarray) -> None:
    """Decode ``images`` (bytes-like, one per frame) into ``out`` (T x H x W x 3, uint8 RGB).

    Raises ValueError when an image is not a JPEG of the frame size, or the count is not T."""
    if len(images) != len(out):
        raise ValueError(f"{len(images)} JPEG images for {len(out)} frames")
    for index, data in enumerate(images):
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
            if image.size != (out.shape[2], out.shape[1]):
                expected = f"{out.shape[2]}x{out.shape[1]}"
                raise ValueError(f"frame {index} is {image.width}x{image.height}, expected {expected}")
            out[index] = image if image.mode == "RGB" else image.convert("RGB")


def decode_jpeg_batch_on_gpu(videos: Sequence[Sequence], shape: tuple[int, int, int, int], device):
    """The frames of several videos' JPEG images as one uint8 tensor B x T x H x W x 3 on ``device``
    (a CUDA device), decoded there in one batch by nvJPEG. Raises ValueError on a frame of another size."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for images in videos for data in images]
    decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    if any(image.shape[1:] != shape[1:3] for image in decoded):
        raise ValueError(f"a JPEG frame is not {shape[2]}x{shape[1]}")
    return torch.stack(decoded).view(len(videos), shape[0], 3, shape[1], shape[2]).permute(0, 1, 3, 4, 2).contiguous()
