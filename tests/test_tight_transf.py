"""tightTransf: CLIP4Clip's cross transformer over caption tokens and frames, trained on pair scores, and
``vidret index --rerank``, which re-scores a dual encoder's candidates with it."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from pipeline.encode.checkpoint import LAST_CHECKPOINT, load_model
from pipeline.encode.embed import EmbedOptions, embed
from pipeline.encode.loss import PairLoss
from pipeline.encode.model import create_clip4clip, score_matrix
from pipeline.encode.train import Trainer, train
from pipeline.errors import VidretError
from pipeline.index import IndexOptions, index_embeddings, metrics_table
from pipeline.index.rerank import make_reranker, rerank
from pipeline.metrics import summarize_ranks
from pipeline.stage import read_stage
from tests.test_encode import _one, torchrun, train_options, weights


def tight_options(data, out, **overrides):
    return train_options(data, out, head="tightTransf", **overrides)


def test_token_features_end_at_eot_and_give_the_text_embedding_there():
    torch.manual_seed(0)
    model = create_clip4clip("vidret-micro", "none", "tightTransf")
    tokens = model.tokenize(["a red square moves left", "a circle"])
    features, mask = model.encode_text_tokens(tokens)
    eot = tokens.argmax(dim=-1)
    assert mask.sum(dim=1).tolist() == (eot + 1).tolist()
    torch.testing.assert_close(F.normalize(features[torch.arange(2), eot], dim=-1), model.encode_text(tokens))
    assert not model.clip.logit_scale.requires_grad  # pair scores have no temperature


def test_pair_loss_is_symmetric_cross_entropy_over_the_pair_score_matrix():
    """Also: the matrix, scored with captions cut to their longest, is each pair scored alone at full length."""
    model = perturbed_pair_model()
    frames = noise_frames(3, 4)
    tokens = model.tokenize(["one", "two words", "and three words"])
    features = model.pair_features(frames, tokens)
    loss = PairLoss(_one(), model.head)([features], 0, True)
    scores = torch.stack([
        torch.stack([model.head(features.text[i : i + 1], features.text_mask[i : i + 1],
                                features.frames[j : j + 1], features.frame_mask[j : j + 1])[0] for j in range(3)])
        for i in range(3)
    ])  # fmt: skip
    torch.testing.assert_close(score_matrix(model.head, features), scores, rtol=1e-5, atol=1e-6)
    expected = sum(-torch.log_softmax(scores[i], 0)[i] - torch.log_softmax(scores[:, i], 0)[i] for i in range(3)) / 6
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert scores.std() > 0.01  # scores that differ: the test can tell the pairs apart


def test_tight_transf_trains_validates_on_pair_scores_and_resumes_exactly(decoded_synthetic, tmp_path):
    """The loss falls; the best epoch's recorded val metrics are best.pt's, recomputed from the full matrix
    of its pair scores over the val split; a stopped run resumes to the uninterrupted one's weights."""
    from pipeline.encode.embed import caption_pairs, pair_features
    from pipeline.encode.reader import FrameStore
    from pipeline.metrics import score_matrix_metrics

    whole = train(tight_options(decoded_synthetic, tmp_path / "whole", recipe={"epochs": 3}))
    history = json.loads((tmp_path / "whole" / "history.json").read_text())
    assert history[-1]["loss"] < history[0]["loss"]
    stage = read_stage(tmp_path / "whole")
    assert stage["params"]["head"] == "tightTransf" and whole.best is not None

    model, _ = load_model(tmp_path / "whole" / "best.pt")
    trainer = Trainer(tight_options(decoded_synthetic, tmp_path / "x"), _one())
    store = FrameStore(decoded_synthetic["frames"])
    video_ids = [entry.video_id for entry in trainer.val]
    text_video_ids, captions = caption_pairs(trainer.val)
    with torch.no_grad():
        features = pair_features(model.eval(), store, store.clip_units(video_ids), model.tokenize(captions))
        scores = score_matrix(model.head, features)
    recomputed = score_matrix_metrics(scores, [video_ids.index(video_id) for video_id in text_video_ids])
    for direction in ("t2v", "v2t"):
        assert recomputed[direction] == pytest.approx(stage["best"][direction], abs=1e-4), direction

    train(tight_options(decoded_synthetic, tmp_path / "split", recipe={"epochs": 3}, stop_after=13))
    train(tight_options(decoded_synthetic, tmp_path / "split", recipe={"epochs": 3}, resume=True))
    expected, got = weights(tmp_path / "whole" / LAST_CHECKPOINT), weights(tmp_path / "split" / LAST_CHECKPOINT)
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    assert torch.equal(got["clip.logit_scale"], trainer.model.state_dict()["clip.logit_scale"])  # never trained


def test_accumulated_pair_loss_gives_the_full_batch_gradients(decoded_synthetic, tmp_path):
    """Four micro-batches of 2 give one batch of 8's gradients: the towers' through the cached features, the
    cross transformer's counted once."""
    gradients = []
    for accum_steps in (1, 4):
        trainer = Trainer(tight_options(decoded_synthetic, tmp_path / "m", accum_steps=accum_steps), _one())
        batches = trainer.epoch_batches()
        loss = float(trainer.backward([next(batches) for _ in range(accum_steps)]))
        batches.close()
        named = trainer.model.named_parameters()
        gradients.append((loss, {name: p.grad.clone() for name, p in named if p.grad is not None}))
    (full_loss, full), (accumulated_loss, accumulated) = gradients
    assert accumulated_loss == pytest.approx(full_loss, rel=1e-6)
    assert full.keys() == accumulated.keys() and any(name.startswith("head.encoder.") for name in full)
    for name in full:
        scale = float(full[name].abs().max())
        assert scale > 0, name
        torch.testing.assert_close(accumulated[name], full[name], rtol=1e-4, atol=1e-5 * scale, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("accum_steps", [1, 2])
def test_two_process_pair_gradients_equal_one_process(decoded_synthetic, tmp_path, accum_steps):
    """The B×B pair scores have cross-rank terms: under torchrun with 2 gloo processes the gradients equal
    one process's on the same global batch of 8, for the towers and the cross transformer.

    At initialisation the cross transformer's scores barely differ, and the true gradients of its biases
    nearly cancel (a shift of every score changes no softmax): what is left of them is the towers' rounding,
    which differs with the batch each process embeds. So its tensors are compared against the largest
    gradient in it, to 1e-4 (measured: under 1e-5), the towers' against their own as elsewhere."""
    data = decoded_synthetic["frames"], decoded_synthetic["manifest"]
    for processes in (1, 2):
        torchrun(processes, "tests/gradient_probe.py", *data, tmp_path / f"{processes}.pt", accum_steps, "tightTransf")
    single, ddp = (torch.load(tmp_path / f"{processes}.pt") for processes in (1, 2))
    assert single.keys() == ddp.keys() and any(name.startswith("head.encoder.") for name in single)
    head_scale = max(float(single[name].abs().max()) for name in single if name.startswith("head."))
    for name in single:
        atol = 1e-4 * head_scale if name.startswith("head.") else 1e-5 * float(single[name].abs().max())
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-4, atol=atol, msg=name)


@pytest.fixture(scope="module")
def reranking_run(decoded_synthetic, tmp_path_factory):
    """meanP trained and its test split embedded; tightTransf fine-tuned from it (post-pretraining)."""
    root = tmp_path_factory.mktemp("rerank")
    data = decoded_synthetic["frames"], decoded_synthetic["manifest"]
    train(train_options(decoded_synthetic, root / "dual", head="meanP", recipe={"epochs": 2}))
    init = root / "dual" / "best.pt"
    train(tight_options(decoded_synthetic, root / "tight", init_from=init, recipe={"epochs": 2}))
    embed(EmbedOptions(*data, root / "embeddings", checkpoint=init, progress=False))
    return {"root": root, "dual": init, "tight": root / "tight" / "best.pt", "embeddings": root / "embeddings"}


def test_reranking_the_whole_gallery_equals_the_full_pair_score_matrix(reranking_run, decoded_synthetic):
    """K = the gallery's size: every pair re-scored, so the metrics are those of the full matrix of pair
    scores, computed here apart; the plain metrics stay beside them, each under its own label."""
    from pipeline.encode.embed import pair_features
    from pipeline.encode.reader import FrameStore
    from pipeline.index.reader import read_embeddings
    from pipeline.metrics import score_matrix_metrics

    run = reranking_run
    embeddings = read_embeddings(run["embeddings"])
    gallery = len(embeddings.video_ids)
    plain = index_embeddings(run["embeddings"], run["root"] / "plain", IndexOptions(progress=False)).metrics
    options = IndexOptions(rerank=run["tight"], rerank_k=gallery, progress=False)
    summary = index_embeddings(run["embeddings"], run["root"] / "full", options)
    metrics = json.loads((run["root"] / "full" / "metrics.json").read_text())
    assert metrics["t2v"] == plain["t2v"] and metrics["v2t"] == plain["v2t"]
    assert metrics["rerank"]["k"] == gallery and metrics["rerank"]["checkpoint"] == str(run["tight"].absolute())

    model, _ = load_model(run["tight"])
    store = FrameStore(decoded_synthetic["frames"])
    with torch.no_grad():
        features = pair_features(model.eval(), store, store.clip_units(embeddings.video_ids),
                                 model.tokenize(embeddings.captions))  # fmt: skip
        expected = score_matrix_metrics(score_matrix(model.head, features), embeddings.text_video_index)
    for direction in ("t2v", "v2t"):
        assert metrics["rerank"][direction] == pytest.approx(expected[direction]), direction
    assert metrics["rerank"]["t2v"] != plain["t2v"]  # the pair head ranks otherwise than the embeddings
    assert "re-ranked top" in summary.line() and "text->video rerank@" in metrics_table(metrics)


def test_reranking_the_top_k_reorders_only_the_candidates(reranking_run):
    """A ground truth within its query's K stays within K, one outside keeps its plain rank; the stage
    reruns when K or the checkpoint changes and not otherwise."""
    run = reranking_run
    out = run["root"] / "top3"
    index_embeddings(run["embeddings"], out, IndexOptions(rerank=run["tight"], rerank_k=3, progress=False))
    ranks = pq.read_table(out / "ranks.parquet").to_pandas()
    from pipeline.index.reader import read_embeddings
    from pipeline.metrics import ground_truth_ranks

    embeddings = read_embeddings(run["embeddings"])
    plain = ground_truth_ranks(embeddings.texts, embeddings.videos, embeddings.text_video_index)
    reranked = rerank(
        make_reranker(run["tight"], 3, run["embeddings"], read_stage(run["embeddings"])), embeddings, plain,
        torch.device("cpu"), progress=False,
    )  # fmt: skip
    for got, before in ((reranked.t2v, plain.t2v), (reranked.v2t, plain.v2t)):
        assert ((got <= 3) == (before <= 3)).all()
        assert (got[before > 3] == before[before > 3]).all()
        assert (got[before <= 3] != before[before <= 3]).any() or (before <= 3).sum() < 2
    assert ranks["rank"].tolist() == [*plain.t2v, *plain.v2t]  # ranks.parquet keeps the plain ranks
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rerank"]["t2v"] == summarize_ranks(reranked.t2v)

    again = index_embeddings(run["embeddings"], out, IndexOptions(rerank=run["tight"], rerank_k=3, progress=False))
    assert again.skip_reason
    other = index_embeddings(run["embeddings"], out, IndexOptions(rerank=run["tight"], rerank_k=4, progress=False))
    assert not other.skip_reason and other.metrics["rerank"]["k"] == 4


def test_impossible_pair_head_combinations_are_one_line_errors(reranking_run, decoded_synthetic, tmp_path):
    """--rerank with a dual encoder's checkpoint; embedding with a pair head's; a missing checkpoint; no
    candidates. Nothing is written."""
    run = reranking_run
    with pytest.raises(VidretError, match=r"^--rerank .*best.pt: a meanP checkpoint, a dual encoder; --rerank takes"):
        index_embeddings(run["embeddings"], tmp_path / "a", IndexOptions(rerank=run["dual"], progress=False))
    assert not (tmp_path / "a").exists() or not (tmp_path / "a" / "metrics.json").exists()
    data = decoded_synthetic["frames"], decoded_synthetic["manifest"]
    with pytest.raises(VidretError, match=r"a tightTransf checkpoint scores \(caption, video\) pairs and makes no"):
        embed(EmbedOptions(*data, tmp_path / "b", checkpoint=run["tight"], progress=False))
    assert not (tmp_path / "b" / "videos.parquet").exists()
    with pytest.raises(VidretError, match=r"^--rerank .*nowhere.pt: no such checkpoint$"):
        IndexOptions(rerank=tmp_path / "nowhere.pt")
    with pytest.raises(VidretError, match=r"^--rerank-k must be"):
        IndexOptions(rerank=run["tight"], rerank_k=0)


def perturbed_pair_model(**options):
    """tightTransf with every weight moved off its initialisation, so that its scores differ clearly."""
    torch.manual_seed(0)
    model = create_clip4clip("vidret-micro", "none", "tightTransf", **options)
    with torch.no_grad():
        for parameter in model.head.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    return model.eval()


def noise_frames(batch: int, num_frames: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, num_frames, 32, 32, 3), dtype=torch.uint8, generator=generator)


@torch.no_grad()
def test_pair_scores_see_frame_order_and_mask_padded_frames():
    """Reversed frames score otherwise (the frame positions); a padded video scores as its real frames alone."""
    model = perturbed_pair_model()
    frames, tokens = noise_frames(2, 5), model.tokenize(["a red square moves left", "a blue circle"])
    scores = score_matrix(model.head, model.pair_features(frames, tokens))
    reversed_scores = score_matrix(model.head, model.pair_features(frames.flip(1), tokens))
    assert (scores - reversed_scores).abs().max() > 1e-3

    padded = frames.clone()
    padded[0, 3:] = 0
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    masked = score_matrix(model.head, model.pair_features(padded, tokens, mask))
    alone = score_matrix(model.head, model.pair_features(frames[:1, :3], tokens))
    torch.testing.assert_close(masked[:, 0], alone[:, 0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(masked[:, 1], scores[:, 1], rtol=1e-5, atol=1e-6)
    assert (score_matrix(model.head, model.pair_features(padded, tokens))[:, 0] - masked[:, 0]).abs().max() > 1e-4


@torch.no_grad()
def test_a_3d_linear_patch_under_a_pair_head_starts_as_the_2d_one():
    flat, deep = perturbed_pair_model(), perturbed_pair_model(linear_patch="3d")
    frames, tokens = noise_frames(2, 4), flat.tokenize(["one", "two"])
    torch.testing.assert_close(
        score_matrix(deep.head, deep.pair_features(frames, tokens)),
        score_matrix(flat.head, flat.pair_features(frames, tokens)), rtol=0, atol=1e-5,
    )  # fmt: skip
