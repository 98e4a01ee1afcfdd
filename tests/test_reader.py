"""read_video against a PyAV reference that decodes every frame, across codecs,
containers, geometries, keyframe layouts and both decoders."""

from collections import Counter
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest

from pipeline.decode.reader import (
    DECODERS,
    FrameSpec,
    StreamIndex,
    VideoError,
    crop_offsets,
    index_stream,
    read_video,
    resized_size,
    skip_plan,
)
from pipeline.decode.sampling import PADDING, sample_frame_indices
from pipeline.synth import write_video

from helpers import decode_with_pyav, make_video, pattern_frames, reference_frames, scramble_mp4_data

# Decoding itself is exact (FFmpeg's decoders either way). The pyav decoder
# resamples as the reference does, so its frames must be identical: any frame
# decoded without a reference it needed would show. decord scales inside its
# filter graph; measured over these tests' codecs, geometries and sizes: mean
# |difference| 0.0-0.6 grey levels, PSNR 38 dB or more.
MAX_MEAN_ABS_DIFF = 1.5
MIN_PSNR_DB = 33.0


@pytest.fixture(params=DECODERS)
def decoder(request) -> str:
    return request.param


def difference(a, b):
    error = np.abs(a.astype(np.float64) - b.astype(np.float64))
    psnr = 10 * np.log10(255**2 / max(np.mean(error**2), 1e-12))
    return error.mean(), psnr


def assert_matches_reference(path, spec):
    video = read_video(path, spec)
    decoded = decode_with_pyav(path)
    decoded_count = len(decoded)
    reference = reference_frames(decoded, video.frame_indices, spec)
    assert video.frames.shape == (spec.num_frames, spec.size, spec.size, 3) and video.frames.dtype == np.uint8
    assert video.frame_indices == sample_frame_indices(decoded_count, spec.num_frames, spec.sampling, fps=video.fps)
    assert video.source_num_frames == decoded_count and video.note == ""
    assert within_tolerance(video.frames, reference), difference(video.frames, reference)
    if spec.decoder == "pyav":
        np.testing.assert_array_equal(video.frames, reference)
    # The check can fail: the neighbouring frames are outside the tolerance.
    neighbours = [i if i == PADDING else min(i + 1, decoded_count - 1) for i in video.frame_indices]
    shifted = reference_frames(decoded, neighbours, spec)
    assert not within_tolerance(video.frames, shifted), difference(video.frames, shifted)
    return video


def within_tolerance(frames, reference):
    mean_abs, psnr = difference(frames, reference)
    return mean_abs <= MAX_MEAN_ABS_DIFF and psnr >= MIN_PSNR_DB


@pytest.mark.parametrize("kind", ["h264-mp4", "mpeg4-avi", "vp9-webm", "mjpeg-mkv", "hevc-mkv"])
def test_every_codec_and_container_matches_a_pyav_reference(codec_videos, kind, decoder):
    video = assert_matches_reference(codec_videos[kind], FrameSpec(decoder=decoder))
    assert video.fps == pytest.approx(30.0)
    assert video.source_num_frames == 48


@pytest.mark.parametrize(
    "width, height, kind",
    [(240, 320, "h264-mp4"), (321, 241, "mpeg4-avi"), (1920, 1080, "h264-mp4"), (224, 224, "mjpeg-mkv")],
    ids=["portrait", "odd-size", "1080p", "exactly-224"],
)
def test_odd_geometries(tmp_path, width, height, kind, decoder):
    path = make_video(tmp_path / f"{width}x{height}.{kind.split('-')[1]}", kind, width, height, num_frames=16)
    assert_matches_reference(path, FrameSpec(decoder=decoder))


@pytest.mark.parametrize(
    "spec",
    [
        FrameSpec(num_frames=8, size=112),  # MMAction2's ratio: short side 128
        FrameSpec(short_side=224),  # CLIP4Clip's resize
        FrameSpec(num_frames=64, sampling="linspace"),  # more frames than the video has
        FrameSpec(num_frames=2, sampling="clip4clip-head"),  # frames 0 and 30 of 48 at 30 fps
        FrameSpec(sampling="clip4clip"),  # 2 seconds of 12: frames 0 and 30, then 10 zero frames
    ],
    ids=["small", "clip4clip-resize", "linspace-64", "clip4clip-head", "clip4clip-padded"],
)
def test_frame_spec_options(codec_videos, spec, decoder):
    assert_matches_reference(codec_videos["h264-mp4"], replace(spec, decoder=decoder))


def test_clip4clip_sampling_pads_a_short_ntsc_video_with_zero_frames(tmp_path):
    """29.97 fps: one frame every int(29.97) = 29; 100 frames hold 4 such seconds, so 6 frames
    are 4 real ones and 2 of padding."""
    path = tmp_path / "ntsc.mp4"
    write_video(path, pattern_frames(100, 160, 120), Fraction(30000, 1001))
    video = assert_matches_reference(path, FrameSpec(num_frames=6, size=64, sampling="clip4clip"))
    assert video.fps == pytest.approx(29.97, abs=0.01)
    assert video.frame_indices == [0, 29, 58, 87, PADDING, PADDING]
    assert not video.frames[4:].any() and video.frames[:4].any(axis=(1, 2, 3)).all()


@pytest.mark.parametrize(
    "width, height, kind",
    [(320, 240, "h264-mp4"), (321, 240, "mpeg4-avi"), (240, 321, "mpeg4-avi"), (1920, 1080, "h264-mp4")],
    ids=["4:3", "odd", "portrait", "1080p"],
)
def test_bicubic_resizes_and_crops_as_torchvision(tmp_path, width, height, kind):
    """Against the same frames resized by a full PyAV decode with swscale's bicubic filter, with
    torchvision's geometry: 321 x 240 -> int(299.6) = 299 x 224 (mmcv: 300), crop offset
    round(37.5) = 38 (mmcv: 37)."""
    path = make_video(tmp_path / f"{width}x{height}.{kind.split('-')[1]}", kind, width, height, num_frames=16)
    assert_matches_reference(path, FrameSpec(num_frames=4, short_side=224, interpolation="bicubic"))
    assert resized_size(321, 240, 224, "bicubic") == (299, 224) and resized_size(321, 240, 224) == (300, 224)
    assert crop_offsets(224, 299, 224, "bicubic") == (0, 38) and crop_offsets(224, 299, 224) == (0, 37)


def test_bicubic_is_close_to_clip4clips_pil_pipeline(codec_videos):
    """CLIP4Clip resizes RGB frames with PIL's bicubic filter (torchvision Resize and CenterCrop);
    swscale's bicubic is close to it, not identical: 0.01-0.4 grey levels on average. (Pillow comes with
    torchvision, which open_clip needs.)"""
    from PIL import Image
    from torchvision import transforms

    clip4clip = transforms.Compose(
        [transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC), transforms.CenterCrop(224)]
    )
    path = codec_videos["h264-mp4"]
    video = read_video(path, FrameSpec(short_side=224, interpolation="bicubic"))
    decoded = decode_with_pyav(path)
    rgb = [decoded[index].to_ndarray(format="rgb24") for index in video.frame_indices]
    reference = np.stack([np.asarray(clip4clip(Image.fromarray(image))) for image in rgb])
    mean_abs, _ = difference(video.frames, reference)
    assert 0 < mean_abs < 0.5


def test_default_resize_is_mmaction2_short_side_256():
    assert FrameSpec().short_side == 256
    assert FrameSpec(size=112).short_side == 128
    assert resized_size(320, 240, 256) == (341, 256)  # 320 * 256 / 240 = 341.33
    assert resized_size(1920, 1080, 256) == (455, 256)  # 455.11
    assert resized_size(241, 321, 256) == (256, 341)  # 340.98 rounds up


@pytest.mark.parametrize("name", ["missing", "empty", "truncated", "text", "folder", "audio", "garbled", "no-frames"])
def test_bad_inputs_raise_video_error_with_status_and_path(bad_videos, name, decoder):
    path, status = bad_videos[name]
    with pytest.raises(VideoError) as raised:
        read_video(path, FrameSpec(decoder=decoder))
    assert raised.value.status == status
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)


def test_damaged_tail_samples_only_frames_that_decode(tmp_path, decoder):
    """The container lists every frame but the end of the data is garbage:
    decoding must fall back to the frames that really decode."""
    intact = make_video(tmp_path / "intact.mp4", num_frames=90)
    path = tmp_path / "damaged.mp4"
    path.write_bytes(scramble_mp4_data(intact.read_bytes(), start=0.6))

    video = read_video(path, FrameSpec(decoder=decoder))
    assert video.source_num_frames == 90
    assert "lists 90 frames but only the first" in video.note
    decodable = int(video.note.split("only the first ")[1].split()[0])
    assert 0 < decodable < 90
    assert video.frame_indices == sample_frame_indices(decodable, 12)
    # The frames kept are those of the undamaged file.
    reference = reference_frames(decode_with_pyav(intact), video.frame_indices, FrameSpec())
    assert within_tolerance(video.frames, reference), difference(video.frames, reference)


def test_av1_decodes_with_pyav_but_not_with_decords_ffmpeg(tmp_path):
    path = tmp_path / "av1.mkv"
    write_video(path, pattern_frames(16, 64, 48), 30, "libsvtav1", "yuv420p", {})
    assert_matches_reference(path, FrameSpec(num_frames=4, size=32))
    with pytest.raises(VideoError) as raised:
        read_video(path, FrameSpec(num_frames=4, size=32, decoder="decord"))
    assert raised.value.status == "unreadable" and str(path) in str(raised.value)


@pytest.mark.parametrize(
    "codec, options",
    [
        ("libx264", {"x264-params": "keyint=8:bframes=3"}),
        ("libx264", {"x264-params": "keyint=8:bframes=3:open-gop=1"}),
        ("libx264", {"x264-params": "keyint=1"}),
        ("libx265", {"x265-params": "keyint=8:bframes=3:log-level=error"}),
        ("libvpx-vp9", {"g": "8", "b": "0"}),
    ],
    ids=["h264-closed-gop", "h264-open-gop", "h264-intra-only", "hevc", "vp9"],
)
@pytest.mark.parametrize("num_frames", [3, 12])
def test_pyav_skips_unneeded_packets_and_still_matches(tmp_path, codec, options, num_frames):
    """Short GOPs and B-frames: the skip plan drops whole GOPs between sampled frames
    and unreferenced frames between them, and every sampled frame still decodes exactly."""
    path = tmp_path / ("gops.webm" if codec == "libvpx-vp9" else "gops.mkv")
    write_video(path, pattern_frames(120, 96, 64), 30, codec, "yuv420p", {"crf": "12", **options})
    spec = FrameSpec(num_frames=num_frames, size=32)
    video = assert_matches_reference(path, spec)
    index = index_stream(path)
    plan = Counter(skip_plan(index, index.presentation_numbers(), set(video.frame_indices)))
    assert plan["DEFAULT"] == num_frames
    if "keyint=1" not in str(options):  # intra-only: every frame is a keyframe, nothing to skip
        assert plan["NONKEY"] > 0, plan


def test_skip_plan_follows_references_in_decode_order():
    """Packets in decode order: keyframes at 0 and 4; the open GOP's frames 4 and 5 (pts)
    are shown before keyframe 6 but decoded after it, so they need keyframe 0's GOP."""
    index = StreamIndex(pts=[0, 3, 1, 2, 6, 4, 5, 9, 7, 8], keyframes=[1, 0, 0, 0, 1, 0, 0, 0, 0, 0])
    numbers = index.presentation_numbers()
    assert skip_plan(index, numbers, {9}) == ["NONKEY"] * 4 + ["NONREF"] * 3 + ["DEFAULT"]
    assert skip_plan(index, numbers, {4}) == ["NONREF"] * 5 + ["DEFAULT"]  # a leading picture
    assert skip_plan(index, numbers, {1, 7}) == ["NONREF"] * 2 + ["DEFAULT", "NONKEY"] + ["NONREF"] * 4 + ["DEFAULT"]
    # Without usable pts there is nothing to number packets by: frames are counted as they come out.
    assert StreamIndex(pts=[0, None], keyframes=[1, 0]).presentation_numbers() is None
    assert StreamIndex(pts=[0, 0], keyframes=[1, 0]).presentation_numbers() is None


def test_a_video_too_long_to_hold_is_demuxed_again(codec_videos, monkeypatch):
    """Past KEPT_PACKET_BYTES the indexing pass keeps no packets and decoding reads the file again."""
    import pipeline.decode.reader as reader

    monkeypatch.setattr(reader, "KEPT_PACKET_BYTES", 0)
    demuxed_again, decode_file = [], reader._decode_file
    monkeypatch.setattr(reader, "_decode_file", lambda *args: demuxed_again.append(args) or decode_file(*args))
    assert_matches_reference(codec_videos["h264-mp4"], FrameSpec())
    assert len(demuxed_again) == 1 and demuxed_again[0][1] is not None  # once, with the index: skipping applies
