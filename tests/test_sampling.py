import numpy as np
import pytest

from pipeline.decode.sampling import PADDING, sample_frame_indices, train_view_seed


def train_draw(source_num_frames, num_frames, seed):
    return sample_frame_indices(source_num_frames, num_frames, rng=np.random.default_rng(seed))


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


@pytest.mark.parametrize("num_frames", [1, 4, 12])
def test_train_mode_draws_one_frame_from_each_segment(num_frames):
    for source in range(1, 300):
        segment = (source - 1) / num_frames
        for seed in range(3):
            indices = train_draw(source, num_frames, seed)
            assert len(indices) == num_frames
            for i, index in enumerate(indices):  # MMAction2: randint(round(seg i), round(seg (i + 1)) + 1)
                assert int(np.round(segment * i)) <= index <= int(np.round(segment * (i + 1))), (source, i, indices)


def test_train_mode_reaches_both_ends_of_a_segment():
    # n = 9, T = 2: seg = 4, segments [0, 4] and [4, 8], both ends inclusive.
    draws = {tuple(train_draw(9, 2, seed)) for seed in range(200)}
    assert {first for first, _ in draws} == set(range(5)) and {second for _, second in draws} == set(range(4, 9))


def test_train_mode_is_seeded():
    assert train_draw(300, 12, 5) == train_draw(300, 12, 5)
    assert train_draw(300, 12, 5) != train_draw(300, 12, 6)


def test_train_view_seeds_depend_on_seed_video_and_view_alone():
    def draw(seed, video_id, view):
        return train_draw(300, 12, train_view_seed(seed, video_id, view))

    views = [draw(0, "video7", view) for view in range(5)]
    assert views == [draw(0, "video7", view) for view in range(5)]  # reproducible
    assert len({tuple(view) for view in views}) == 5  # the views differ
    assert sample_frame_indices(300, 12) not in views  # and differ from test mode
    assert draw(1, "video7", 0) != views[0] and draw(0, "video8", 0) != views[0]


def test_clip4clip_takes_one_frame_per_second_then_linspace_or_the_head():
    # 100 frames at 30 fps: seconds 0, 30, 60, 90.
    assert sample_frame_indices(100, 3, "clip4clip", fps=30.0) == [0, 30, 90]  # linspace(0, 3, 3) = 0, 1.5, 3
    assert sample_frame_indices(100, 3, "clip4clip-head", fps=30.0) == [0, 30, 60]
    assert sample_frame_indices(100, 4, "clip4clip", fps=30.0) == [0, 30, 60, 90]


def test_clip4clip_truncates_the_frame_rate():
    # 29.97 fps: a step of int(29.97) = 29 frames, so 300 frames give 0, 29, ..., 290 (11 seconds);
    # linspace(0, 10, 4) = 0, 3.33, 6.67, 10.
    assert sample_frame_indices(300, 4, "clip4clip", fps=29.97) == [0, 87, 174, 290]
    assert sample_frame_indices(300, 4, "clip4clip-head", fps=29.97) == [0, 29, 58, 87]


@pytest.mark.parametrize("sampling", ["clip4clip", "clip4clip-head"])
def test_clip4clip_pads_a_video_shorter_than_t_seconds_instead_of_repeating(sampling):
    assert sample_frame_indices(100, 6, sampling, fps=30.0) == [0, 30, 60, 90, PADDING, PADDING]
    assert sample_frame_indices(1, 3, sampling, fps=30.0) == [0, PADDING, PADDING]


@pytest.mark.parametrize("fps", [0.5, 0.0])
def test_clip4clip_below_one_fps_steps_one_frame(fps):
    assert sample_frame_indices(5, 8, "clip4clip", fps=fps) == [0, 1, 2, 3, 4] + [PADDING] * 3
    assert sample_frame_indices(5, 3, "clip4clip", fps=fps) == [0, 2, 4]


@pytest.mark.parametrize("sampling", ["clip4clip", "clip4clip-head"])
def test_clip4clip_indices_rise_then_pad_at_the_end(sampling):
    for source in range(1, 400, 7):
        for fps in (0.7, 24.0, 29.97, 60.0):
            indices = sample_frame_indices(source, 12, sampling, fps=fps)
            real = [index for index in indices if index != PADDING]
            assert len(indices) == 12 and indices[: len(real)] == real
            assert real[0] == 0 and real[-1] <= source - 1 and np.all(np.diff(real) > 0)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="at least one frame"):
        sample_frame_indices(0, 12)
    with pytest.raises(ValueError, match="unknown sampling"):
        sample_frame_indices(10, 12, "random")
    with pytest.raises(ValueError, match="uniform sampling only, not 'linspace'"):
        sample_frame_indices(10, 12, "linspace", rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="needs the video's frame rate"):
        sample_frame_indices(10, 12, "clip4clip")
