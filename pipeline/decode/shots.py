"""Shot boundaries for ``decode --clip-shots``, by PySceneDetect's adaptive content detector.

The detector (``detect-adaptive``, PySceneDetect's default: a frame whose change in
hue, saturation and brightness stands out 3x against its neighbours', shots of at
least 15 frames) is fed the frames as vidret's PyAV reader decodes them, so that its
frame numbers are the reader's. Each frame is converted straight to a small BGR
image in one swscale call, at most 256 pixels wide as PySceneDetect downscales by
default, which keeps the detection pass near the cost of decoding every frame.

scenedetect (and OpenCV, which it needs) is imported here only: only a run with
--clip-shots loads it.
"""

from __future__ import annotations

from collections.abc import Iterable

DETECTION_WIDTH = 256  # PySceneDetect's scene_manager.DEFAULT_MIN_WIDTH


def shot_cuts(frames: Iterable, fps: float) -> list[int]:
    """The numbers of the frames that start a new shot, among ``frames`` (PyAV video frames in
    presentation order, numbered from 0)."""
    from av.video.reformatter import VideoReformatter
    from scenedetect.common import FrameTimecode
    from scenedetect.detectors import AdaptiveDetector

    detector, reformatter = AdaptiveDetector(), VideoReformatter()  # one swscale context for every frame
    cuts, timecode = [], None
    for number, frame in enumerate(frames):
        width, height = frame.width, frame.height
        if width > DETECTION_WIDTH:
            width, height = DETECTION_WIDTH, max(1, round(height * DETECTION_WIDTH / width))
        image = reformatter.reformat(frame, width=width, height=height, format="bgr24").to_ndarray()
        timecode = FrameTimecode(number, float(fps))  # scenedetect takes an int for a frame count, not a rate
        cuts += detector.process_frame(timecode, image)
    if timecode is not None:
        cuts += detector.post_process(timecode)
    return sorted({cut.frame_num for cut in cuts})
