import numpy as np
import pytest

from pipeline.decode.sampling import sample_frame_indices


def test_uniform_long_video_matches_mmaction2_test_mode_by_hand():
    # n = 100, T = 12: seg = 99 / 12 = 8.25, offset int(8.25 / 2) = 4;
    # round(8.25 i) = 0 8 16 25 33 41 50 58 66 74 82 91 (16.5 -> 16, 49.5 -> 50, 82.5 -> 82: half to even).
    assert sample_frame_indices(100, 12) == [4, 12, 20, 29, 37, 45, 54, 62, 70, 78, 86, 95]


def test_uniform_video_shorter_than_t_repeats_frames():
    # n = 5: seg = 4 / 12, offset 0; round(i / 3) for i = 0..11.
    assert sample_frame_indices(5, 12) == [0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4]


@pytest.mark.parametrize("sampling", ["uniform", "linspace"])
def test_one_frame_video_gives_t_copies_of_frame_zero(sampling):
    assert sample_frame_indices(1, 12, sampling) == [0] * 12


def test_linspace_keeps_first_and_last_frames():
    assert sample_frame_indices(100, 12, "linspace") == [0, 9, 18, 27, 36, 45, 54, 63, 72, 81, 90, 99]
    assert sample_frame_indices(10, 4, "linspace") == [0, 3, 6, 9]


@pytest.mark.parametrize("sampling", ["uniform", "linspace"])
@pytest.mark.parametrize("num_frames", [1, 8, 12, 64])
def test_indices_are_in_range_sorted_and_exactly_t(sampling, num_frames):
    for source in range(1, 400):
        indices = sample_frame_indices(source, num_frames, sampling)
        assert len(indices) == num_frames
        assert 0 <= indices[0] and indices[-1] <= source - 1
        assert np.all(np.diff(indices) >= 0)
        # No repeats once there are enough frames. MMAction2's seg = (n - 1) / T
        # is below 1 at n = T, so uniform needs one frame more than linspace.
        if source >= num_frames + (sampling == "uniform"):
            assert len(set(indices)) == num_frames, (source, indices)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="at least one frame"):
        sample_frame_indices(0, 12)
    with pytest.raises(ValueError, match="unknown sampling"):
        sample_frame_indices(10, 12, "random")
