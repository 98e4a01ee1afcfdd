"""Frames as a player shows them: the display matrix's rotation (and mirror) and non-square pixels.

The videos are written with PyAV, which stores the display matrix in the MP4 track header
(``VideoStream.set_display_rotation``: degrees counterclockwise, then the mirrors) and the sample
aspect ratio in the H.264 stream. What a player shows is derived here from what was written, the
stored image turned counterclockwise by the angle and then mirrored, independently of the reader's
own translation of the matrix (ffplay's tests on its signs).
"""

from fractions import Fraction

import av
import numpy as np
import pytest

from pipeline.decode.reader import DECODERS, FrameSpec, read_video

# The stored frame: 128 x 64, white and red blocks side by side above the middle, both inside every
# orientation's centre crop (size 64 at short side 64: no resampling, only the codec's loss).
WIDTH, HEIGHT, SIZE = 128, 64, 64


def stored_image(width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    middle = width // 2
    image[16:32, middle - 16 : middle] = 255  # white
    image[16:32, middle : middle + 16, 0] = 255  # red, right of the white block
    return image


def write_video(path, image: np.ndarray, degrees=0, hflip=False, vflip=False, sample_aspect_ratio=None) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "yuv420p"
        if sample_aspect_ratio:
            stream.codec_context.sample_aspect_ratio = sample_aspect_ratio
        if degrees or hflip or vflip:
            stream.set_display_rotation(degrees, hflip=hflip, vflip=vflip)
        for _ in range(4):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def as_displayed(image: np.ndarray, degrees: int, hflip: bool, vflip: bool) -> np.ndarray:
    shown = np.rot90(image, degrees // 90)  # counterclockwise
    if hflip:
        shown = shown[:, ::-1]
    if vflip:
        shown = shown[::-1]
    return shown


def centre(image: np.ndarray, size: int) -> np.ndarray:
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[top : top + size, left : left + size]


def block_centre(frame: np.ndarray, colour: str) -> np.ndarray:
    """(row, column) of the white or the red block's centre."""
    red, green = frame[..., 0].astype(int), frame[..., 1].astype(int)
    mask = (red > 200) & ((green > 200) if colour == "white" else (green < 60))
    return np.argwhere(mask).mean(axis=0)


ORIENTATIONS = [
    (0, False, False),
    (90, False, False),
    (180, False, False),
    (270, False, False),
    (90, True, False),  # a front camera's mirrored portrait
    (270, True, False),
    (0, True, False),
    (0, False, True),
]


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize(("degrees", "hflip", "vflip"), ORIENTATIONS)
def test_frames_come_out_as_a_player_shows_them(tmp_path, decoder, degrees, hflip, vflip):
    path = tmp_path / "rotated.mp4"
    image = stored_image()
    write_video(path, image, degrees, hflip, vflip)
    frame = read_video(path, FrameSpec(num_frames=1, size=SIZE, short_side=SIZE, decoder=decoder)).frames[0]
    expected = centre(as_displayed(image, degrees, hflip, vflip), SIZE)
    for colour in ("white", "red"):
        np.testing.assert_allclose(block_centre(frame, colour), block_centre(expected, colour), atol=1.0)
    assert np.abs(frame.astype(int) - expected).mean() < 3


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_quarter_turn_makes_a_landscape_frame_portrait_before_the_resize(tmp_path, decoder):
    """The short side is the displayed one: a 128 x 64 frame turned 90 degrees is 64 wide, so at short
    side 32 it is resized to 32 x 64 (not 64 x 32) and the crop takes its middle rows."""
    path = tmp_path / "portrait.mp4"
    image = stored_image()
    write_video(path, image, degrees=270)
    frame = read_video(path, FrameSpec(num_frames=1, size=32, short_side=32, decoder=decoder)).frames[0]
    shown = as_displayed(image, 270, False, False)[::2, ::2]  # 32 wide x 64 tall
    expected = centre(shown, 32)
    for colour in ("white", "red"):
        np.testing.assert_allclose(block_centre(frame, colour), block_centre(expected, colour), atol=1.5)


@pytest.mark.parametrize("decoder", DECODERS)
def test_non_square_pixels_are_stretched_as_displayed(tmp_path, decoder):
    """A 64 x 64 frame with pixels twice as wide as tall shows as 128 x 64: the white block,
    16 pixels wide as stored, is 32 wide on screen, so 32 wide after a resize to short side 64."""
    path = tmp_path / "anamorphic.mp4"
    image = np.zeros((64, 64, 3), np.uint8)
    image[16:32, 24:40] = 255
    write_video(path, image, sample_aspect_ratio=Fraction(2, 1))
    with av.open(str(path)) as container:
        assert container.streams.video[0].sample_aspect_ratio == 2  # what a player reads
    spec = FrameSpec(num_frames=1, size=64, short_side=64, decoder=decoder)
    frame = read_video(path, spec).frames[0]
    columns = np.flatnonzero(frame[24].min(axis=-1) > 128)
    # Displayed 128 wide, the block spans 48..80; the crop starts at (128 - 64) // 2 = 32.
    assert columns.min() == pytest.approx(16, abs=1) and columns.max() == pytest.approx(47, abs=1)
    assert 14 <= np.flatnonzero(frame[:, 32].min(axis=-1) > 128).size <= 17  # rows keep their height
