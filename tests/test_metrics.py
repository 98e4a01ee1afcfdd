import numpy as np
import pytest
import torch

from pipeline.metrics import retrieval_metrics, retrieval_ranks, summarize_ranks

from helpers import brute_force_dsl_ranks, brute_force_ranks, random_captions, unit_rows

# Three videos (axes 0..2) and four captions. Every score is one component times 1.0,
# so equal literals give bit-equal scores and the ties below are exact.
HAND_VIDEOS = np.eye(3, 4, dtype=np.float32)
HAND_TEXTS = np.array(
    [
        [0.6, 0.8, 0.0, 0.0],  # video 0: scores .6 .8 0 -> rank 2
        [0.8, 0.6, 0.0, 0.0],  # video 1: scores .8 .6 0 -> rank 2
        [0.5, 0.5, 0.5, 0.5],  # video 2: scores .5 .5 .5 -> three-way tie, rank 3
        [0.0, 0.6, 0.8, 0.0],  # video 2: scores 0 .6 .8 -> rank 1
    ],
    dtype=np.float32,
)
HAND_INDEX = np.array([0, 1, 2, 2])


def clip4clip_style_metrics(sim: np.ndarray) -> dict[str, float]:
    """CLIP4Clip's recipe for a square query x candidate matrix whose truth is the diagonal:
    sort each row descending and take the diagonal's position + 1."""
    order = np.argsort(-sim, axis=1)
    ranks = np.array([int(np.flatnonzero(order[i] == i)[0]) + 1 for i in range(sim.shape[0])])
    return {
        "R@1": 100.0 * np.sum(ranks <= 1) / len(ranks),
        "R@5": 100.0 * np.sum(ranks <= 5) / len(ranks),
        "R@10": 100.0 * np.sum(ranks <= 10) / len(ranks),
        "MdR": float(np.median(ranks - 1) + 1),
        "MnR": float(np.mean(ranks - 1) + 1),
    }


def test_hand_made_example():
    t2v, v2t = retrieval_ranks(HAND_TEXTS, HAND_VIDEOS, HAND_INDEX)
    assert t2v.tolist() == [2, 2, 3, 1]
    # video 0 over texts: .6 .8 .5 0, own .6 -> 2; video 1: .8 .6 .5 .6, own .6 ties caption 3 -> 3;
    # video 2: 0 0 .5 .8, own .5 and .8 -> best is .8 -> 1.
    assert v2t.tolist() == [2, 3, 1]
    metrics = retrieval_metrics(HAND_TEXTS, HAND_VIDEOS, HAND_INDEX)
    assert metrics["num_texts"] == 4 and metrics["num_videos"] == 3
    assert metrics["t2v"] == {"R@1": 25.0, "R@5": 100.0, "R@10": 100.0, "MdR": 2.0, "MnR": 2.0}
    assert metrics["v2t"] == pytest.approx({"R@1": 100 / 3, "R@5": 100.0, "R@10": 100.0, "MdR": 2.0, "MnR": 2.0})


def test_summary_thresholds_are_inclusive_and_values_are_plain_floats():
    summary = summarize_ranks(np.array([1, 5, 6, 10, 11, 100]))
    assert summary == pytest.approx({"R@1": 100 / 6, "R@5": 200 / 6, "R@10": 400 / 6, "MdR": 8.0, "MnR": 133 / 6})
    assert all(type(value) is float for value in summary.values())
    assert summarize_ranks(np.array([3, 4]))["MdR"] == 3.5


@pytest.mark.parametrize("num_videos", [1, 2, 5])
def test_constant_model_gets_the_worst_rank(num_videos):
    index = np.repeat(np.arange(num_videos), 2)
    videos = np.full((num_videos, 4), 0.5, dtype=np.float32)
    texts = np.full((len(index), 4), 0.5, dtype=np.float32)
    t2v, v2t = retrieval_ranks(texts, videos, index, block_size=3)
    assert t2v.tolist() == [num_videos] * len(index)
    # Every other video's caption ties with the best own one and counts against the video.
    assert v2t.tolist() == [1 + len(index) - np.sum(index == video) for video in range(num_videos)]
    metrics = retrieval_metrics(texts, videos, index)
    assert metrics["t2v"]["R@1"] == metrics["v2t"]["R@1"] == (100.0 if num_videos == 1 else 0.0)


def test_perfect_model_gets_rank_one():
    rng = np.random.default_rng(0)
    videos = np.linalg.qr(rng.standard_normal((32, 20)))[0].T.astype(np.float32)  # 20 orthonormal rows
    index = rng.permutation(20)
    t2v, v2t = retrieval_ranks(videos[index], videos, index, block_size=8)
    assert (t2v == 1).all() and (v2t == 1).all()
    metrics = retrieval_metrics(videos[index], videos, index)
    assert metrics["t2v"] == metrics["v2t"] == {"R@1": 100.0, "R@5": 100.0, "R@10": 100.0, "MdR": 1.0, "MnR": 1.0}


@pytest.mark.parametrize("block_size", [1, 7, 10_000])
def test_blockwise_equals_brute_force(block_size):
    rng = np.random.default_rng(1)
    videos = unit_rows(rng, 40, 16)
    index = random_captions(rng, 40, 4)
    texts = unit_rows(rng, len(index), 16)
    expected_t2v, expected_v2t = brute_force_ranks(texts, videos, index)
    t2v, v2t = retrieval_ranks(texts, videos, index, block_size=block_size)
    np.testing.assert_array_equal(t2v, expected_t2v)
    np.testing.assert_array_equal(v2t, expected_v2t)
    assert t2v.min() >= 1 and t2v.max() <= 40 and v2t.max() <= len(index)


@pytest.mark.parametrize("block_size", [1, 7, 10_000])
def test_blockwise_equals_brute_force_with_many_exact_ties(block_size):
    # Small integers: every product and sum is exact in float32, so ties are the same in any summation order.
    rng = np.random.default_rng(2)
    videos = rng.integers(-1, 2, (30, 3)).astype(np.float32)
    index = random_captions(rng, 30, 4)
    texts = rng.integers(-1, 2, (len(index), 3)).astype(np.float32)
    expected_t2v, expected_v2t = brute_force_ranks(texts, videos, index)
    t2v, v2t = retrieval_ranks(torch.from_numpy(texts), torch.from_numpy(videos), index, block_size=block_size)
    np.testing.assert_array_equal(t2v, expected_t2v)
    np.testing.assert_array_equal(v2t, expected_v2t)


def test_matches_clip4clip_recipe_on_tie_free_one_caption_data():
    rng = np.random.default_rng(3)
    videos = unit_rows(rng, 50, 12)
    texts = unit_rows(rng, 50, 12) * 2.0 + videos  # weak signal, so the ranks spread past 10
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    sim = texts @ videos.T
    assert len(np.unique(sim)) == sim.size  # tie-free, so sorting and counting must agree
    metrics = retrieval_metrics(torch.from_numpy(texts), torch.from_numpy(videos), torch.arange(50), block_size=16)
    assert metrics["t2v"] == pytest.approx(clip4clip_style_metrics(sim))
    assert metrics["v2t"] == pytest.approx(clip4clip_style_metrics(sim.T))
    assert 0 < metrics["t2v"]["R@1"] < metrics["t2v"]["R@5"] < metrics["t2v"]["R@10"] < 100


def test_v2t_uses_the_best_caption():
    videos = np.eye(2, dtype=np.float32)
    texts = np.array([[0.0, 1.0], [1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
    index = np.array([0, 1, 0, 1])
    # Video 0 over texts scores 0, 1, .6, 0: own caption 0 alone would rank 4, own caption 2 ranks 2.
    # Video 1 over texts scores 1, 0, .8, 1: own caption 1 alone would rank 4, own caption 3 ranks 2 (tie).
    for block_size in (1, 4096):
        _, v2t = retrieval_ranks(texts, videos, index, block_size=block_size)
        assert v2t.tolist() == [2, 2]


def test_v2t_does_not_count_tied_own_captions_against_the_video():
    # MSVD repeats captions verbatim: a perfect model ranks a video with two identical captions first,
    # while another video's caption that ties with them still counts against it.
    videos = np.eye(2, dtype=np.float32)
    _, v2t = retrieval_ranks(videos[[0, 0, 1]], videos, np.array([0, 0, 1]))
    assert v2t.tolist() == [1, 1]
    texts = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    for block_size in (1, 4096):
        _, v2t = retrieval_ranks(texts, videos, np.array([0, 0, 1, 1]), block_size=block_size)
        assert v2t.tolist() == [2, 1]


def test_a_video_without_caption_is_a_t2v_distractor_and_no_v2t_query():
    videos = np.eye(3, dtype=np.float32)
    texts = np.array([[0.6, 0.8, 0.0], [0.0, 0.8, 0.6]], dtype=np.float32)  # both prefer uncaptioned video 1
    t2v, v2t = retrieval_ranks(texts, videos, np.array([0, 2]))
    assert t2v.tolist() == [2, 2]  # first without video 1
    assert v2t.tolist() == [1, 1]  # videos 0 and 2 only: video 1 has no ground truth to rank
    metrics = retrieval_metrics(texts, videos, np.array([0, 2]))
    assert metrics["num_videos"] == 3 and metrics["num_texts"] == 2
    with pytest.raises(ValueError, match="no caption"):
        retrieval_metrics(np.zeros((0, 3), dtype=np.float32), videos, np.array([], dtype=np.int64))


def test_rejects_bad_inputs():
    videos = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="must lie in"):
        retrieval_ranks(videos, videos, np.array([0, 1, 3]))
    with pytest.raises(ValueError, match="one entry per text"):
        retrieval_ranks(videos, videos, np.array([0, 1]))
    with pytest.raises(ValueError, match="embedding sizes differ"):
        retrieval_ranks(videos[:, :2], videos, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_ranks(np.full((3, 3), np.nan, dtype=np.float32), videos, np.array([0, 1, 2]))


def noisy_captions(rng: np.random.Generator, videos: np.ndarray, index: np.ndarray, noise: float) -> np.ndarray:
    texts = videos[index] + noise * unit_rows(rng, len(index), videos.shape[1])
    return (texts / np.linalg.norm(texts, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("scale", [10.0, 100.0])
@pytest.mark.parametrize("block_size", [1, 7, 10_000])
def test_dual_softmax_equals_brute_force(block_size, scale):
    rng = np.random.default_rng(6)
    videos = unit_rows(rng, 30, 16)
    index = random_captions(rng, 30, 3)
    texts = noisy_captions(rng, videos, index, 2.0)
    sim = texts.astype(np.float64) @ videos.T.astype(np.float64)
    # Positive ground truths: a negative one times a prior that underflows in float32 would rank
    # differently in float32 (the library) and in float64 (the reference).
    assert (sim[np.arange(len(index)), index] > 0).all()
    expected_t2v, expected_v2t = brute_force_dsl_ranks(texts, videos, index, scale)
    plain_t2v, plain_v2t = brute_force_ranks(texts, videos, index)
    assert (expected_t2v != plain_t2v).any() and (expected_v2t != plain_v2t).any()
    blocks = []
    t2v, v2t = retrieval_ranks(texts, videos, index, block_size, dual_softmax=scale, on_block=blocks.append)
    np.testing.assert_array_equal(t2v, expected_t2v)
    np.testing.assert_array_equal(v2t, expected_v2t)
    # a pass over the texts for the priors, then the texts and the videos as queries
    assert sum(blocks) == 2 * len(index) + 30 and max(blocks) == min(block_size, max(len(index), 30))


def test_dual_softmax_demotes_a_hub_video():
    # Every caption leans towards one shared direction, and one video (the hub) lies on it: plain
    # similarity ranks the hub first for many captions. The hub's prior is spread over all of them,
    # while each true video's prior is concentrated on its own captions, so DSL restores them.
    rng = np.random.default_rng(0)
    videos = unit_rows(rng, 30, 16)
    hub = unit_rows(rng, 1, 16)
    index = random_captions(rng, 30, 3)
    texts = videos[index] + hub + 0.5 * unit_rows(rng, len(index), 16)
    texts = np.vstack([texts, hub + 0.3 * unit_rows(rng, 1, 16)])  # the hub's own caption
    texts = (texts / np.linalg.norm(texts, axis=1, keepdims=True)).astype(np.float32)
    videos = np.vstack([videos, hub])
    index = np.append(index, 30)
    assert np.mean((texts @ videos.T).argmax(axis=1) == 30) > 0.4  # the hub wins for many captions

    plain_t2v, _ = retrieval_ranks(texts, videos, index)
    dsl_t2v, _ = retrieval_ranks(texts, videos, index, block_size=16, dual_softmax=100.0)
    np.testing.assert_array_equal(dsl_t2v, brute_force_dsl_ranks(texts, videos, index, 100.0)[0])
    plain, dsl = summarize_ranks(plain_t2v), summarize_ranks(dsl_t2v)
    assert plain["R@1"] < 60 and dsl["R@1"] > 90
    assert dsl["MnR"] < plain["MnR"]
