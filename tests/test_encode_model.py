"""CLIP4Clip on open_clip (pipeline.encode.model) and its checkpoints (pipeline.encode.checkpoint).

Everything runs on real open_clip models built from the project's ``vidret-micro`` config
(32x32 frames, 32-d embeddings), with random weights: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from pipeline.encode.checkpoint import load_model, model_state, read_checkpoint, save_checkpoint
from pipeline.encode.model import (
    HEADS,
    PAIR_HEADS,
    SEQ_TRANSFORMER_LAYERS,
    ModelSpec,
    TemporalPatchEmbedding,
    check_model_choice,
    create_clip4clip,
    quick_gelu_needed,
    score_matrix,
)
from pipeline.errors import VidretError

MODEL = "vidret-micro"
SIZE = 32  # vidret-micro's image size
DIM = 32  # vidret-micro's embed_dim
DUAL_HEADS = [head for head in HEADS if head not in PAIR_HEADS]  # the heads that embed videos
EOT = 49407  # open_clip's end-of-text token: the largest id; padding is 0
CONTEXT = 16  # vidret-micro's text context length
LONG = "a man rides a horse on the beach at sunset"  # 10 words, 12 tokens with SOT and EOT
PROJECT = Path(__file__).resolve().parents[1]

# Extra configs registered with open_clip for the tests; vidret-micro with one thing changed.
MICRO_CONFIG = json.loads((PROJECT / "pipeline/encode/model_configs/vidret-micro.json").read_text())
DEEP = "vidret-test-deep-text"  # 6 text layers: seqTransf must take the first 4
NARROW = "vidret-test-narrow-embed"  # embed_dim 16 != text width 32
SHALLOW = "vidret-test-shallow-text"  # 2 text layers < 4
BIDIRECTIONAL = "vidret-test-bidirectional-text"  # no causal mask, last-token pooling (SigLIP's kind)
GELU_TWIN = "vidret-test-gelu"  # registered with a twin NAME-quickgelu, as open_clip's ViT-B-32 has


@pytest.fixture(scope="module")
def extra_models(tmp_path_factory) -> None:
    """Write and register the extra open_clip configs."""
    folder = tmp_path_factory.mktemp("open_clip_configs")
    variants = {
        DEEP: {"text_cfg": {**MICRO_CONFIG["text_cfg"], "layers": 6}},
        NARROW: {"embed_dim": 16},
        SHALLOW: {"text_cfg": {**MICRO_CONFIG["text_cfg"], "layers": 2}},
        BIDIRECTIONAL: {"text_cfg": {**MICRO_CONFIG["text_cfg"], "no_causal_mask": True, "pool_type": "last"}},
        GELU_TWIN: {},
        f"{GELU_TWIN}-quickgelu": {"quick_gelu": True},
    }
    for name, change in variants.items():
        path = folder / f"{name}.json"
        path.write_text(json.dumps({**MICRO_CONFIG, **change}))
        open_clip.add_model_config(path)
    assert set(variants) <= set(open_clip.list_models())


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one intra-op thread is faster, and much faster on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(head: str, model: str = MODEL, seed: int = 0, caption_length: int | None = None, **options):
    torch.manual_seed(seed)
    return create_clip4clip(model, "none", head, caption_length, **options).eval()


def random_frames(batch: int, num_frames: int, seed: int = 0) -> torch.Tensor:
    """uint8 B×T×H×W×3 noise frames."""
    generator = np.random.default_rng(seed)
    return torch.from_numpy(generator.integers(0, 256, (batch, num_frames, SIZE, SIZE, 3), dtype=np.uint8))


def tokens(*captions: str) -> torch.Tensor:
    """open_clip's own tokenisation, to the full context length."""
    return open_clip.get_tokenizer(MODEL)(list(captions))


def assert_state_dicts_equal(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    different = [key for key in expected if not torch.equal(actual[key], expected[key])]
    assert not different, f"tensors differ: {different}"


def assert_one_line(error: VidretError, *needles: str) -> None:
    message = str(error)
    assert "\n" not in message, f"message is not one line: {message!r}"
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


@torch.no_grad()
@pytest.mark.parametrize("head", DUAL_HEADS)
def test_head_output_shapes_and_norms(head):
    """Every head maps uint8 B×T×H×W×3 frames to B×T×D frame features and unit B×D videos; text is unit B×D;
    forward returns (video, text, the scalar logit scale)."""
    model = make_model(head)
    frames = random_frames(2, 3)
    text = tokens("a cat on a mat", "a dog")

    assert model.encode_frames(frames).shape == (2, 3, DIM)
    video = model.encode_video(frames)
    assert video.shape == (2, DIM)
    torch.testing.assert_close(video.norm(dim=-1), torch.ones(2))
    text_features = model.encode_text(text)
    assert text_features.shape == (2, DIM)
    torch.testing.assert_close(text_features.norm(dim=-1), torch.ones(2))

    forward_video, forward_text, scale = model(frames, text)
    torch.testing.assert_close(forward_video, video)
    torch.testing.assert_close(forward_text, text_features)
    assert scale.ndim == 0 and scale.item() == pytest.approx(1 / 0.07, rel=1e-6)  # CLIP's initial temperature


@pytest.mark.parametrize("name", [MODEL, DEEP])
def test_seq_transformer_copies_first_text_layers(extra_models, name):
    """seqTransf's 4 blocks and position embeddings start equal to the text transformer's first 4 blocks and
    token position embeddings, but are copies: distinct parameters, edits on either side stay on that side."""
    model = make_model("seqTransf", name)
    head, clip = model.head, model.clip
    resblocks = clip.transformer.resblocks
    assert len(resblocks) == (6 if name == DEEP else 4)
    assert len(head.blocks) == SEQ_TRANSFORMER_LAYERS == 4
    for i, block in enumerate(head.blocks):
        assert_state_dicts_equal(block.state_dict(), resblocks[i].state_dict())
    # The text blocks differ from one another, so the checks above pin the order too.
    assert not torch.equal(resblocks[0].attn.in_proj_weight, resblocks[1].attn.in_proj_weight)
    torch.testing.assert_close(head.frame_position_embeddings.weight, clip.positional_embedding, rtol=0, atol=0)

    head_params, clip_params = list(head.parameters()), list(clip.parameters())
    assert not {id(p) for p in head_params} & {id(p) for p in clip_params}
    assert not {p.data_ptr() for p in head_params} & {p.data_ptr() for p in clip_params}

    with torch.no_grad():
        text_weight = resblocks[0].mlp.c_fc.weight.clone()
        head.blocks[0].mlp.c_fc.weight.add_(1.0)
        assert torch.equal(resblocks[0].mlp.c_fc.weight, text_weight)

        head_weight = head.blocks[1].attn.in_proj_weight.clone()
        resblocks[1].attn.in_proj_weight.mul_(2.0)
        assert torch.equal(head.blocks[1].attn.in_proj_weight, head_weight)

        position = head.frame_position_embeddings.weight.clone()
        clip.positional_embedding.add_(1.0)
        assert torch.equal(head.frame_position_embeddings.weight, position)


@torch.no_grad()
def test_seq_transformer_is_not_causal_and_mean_pooling_head_is_identity():
    """Changing the last frame changes seqTransf's output for the first frame (no causal mask);
    the meanP head returns the frame features unchanged."""
    frames = random_frames(2, 4)
    changed = frames.clone()
    changed[:, -1] = 255 - changed[:, -1]

    model = make_model("seqTransf")
    features, changed_features = model.encode_frames(frames), model.encode_frames(changed)
    torch.testing.assert_close(changed_features[:, :-1], features[:, :-1])  # frames are encoded one by one
    first, changed_first = model.head(features)[:, 0], model.head(changed_features)[:, 0]
    assert (first - changed_first).abs().max() > 1e-4

    mean_model = make_model("meanP")
    features = mean_model.encode_frames(frames)
    assert torch.equal(mean_model.head(features), features)
    expected = F.normalize(F.normalize(features, dim=-1).mean(dim=1), dim=-1)
    torch.testing.assert_close(mean_model.encode_video(frames), expected)


@torch.no_grad()
@pytest.mark.parametrize("head", DUAL_HEADS)
def test_frame_order(head):
    """Reversing the frames leaves meanP's video features unchanged and changes seqLSTM's and seqTransf's."""
    model = make_model(head)
    frames = random_frames(2, 4)
    forward, backward = model.encode_video(frames), model.encode_video(frames.flip(1))
    if head == "meanP":
        torch.testing.assert_close(backward, forward)
    else:
        assert (forward - backward).abs().max() > 1e-4


@torch.no_grad()
def test_mean_pooling_matches_open_clip_reference():
    """meanP's video feature is open_clip's image feature of each frame, preprocessed with the model's own
    mean/std, L2-normalised, averaged over frames and L2-normalised again."""
    model = make_model("meanP")
    batch, num_frames = 2, 3
    frames = random_frames(batch, num_frames, seed=7)

    config = open_clip.get_model_preprocess_cfg(model.clip)
    assert tuple(config["size"]) == model.image_size == (SIZE, SIZE)
    pixels = frames.numpy().astype(np.float32) / 255.0  # B×T×H×W×3 in [0, 1], as ToTensor gives
    pixels = (pixels - np.asarray(config["mean"], np.float32)) / np.asarray(config["std"], np.float32)
    images = torch.from_numpy(pixels.reshape(batch * num_frames, SIZE, SIZE, 3)).permute(0, 3, 1, 2).contiguous()
    per_frame = F.normalize(model.clip.encode_image(images), dim=-1).view(batch, num_frames, -1)
    expected = F.normalize(per_frame.mean(dim=1), dim=-1)

    torch.testing.assert_close(model.encode_video(frames), expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_text_feature_comes_from_end_of_text_token():
    """encode_text is open_clip's text feature, L2-normalised; tokens after EOT (padding) do not change it,
    a token before EOT does."""
    model = make_model("meanP")
    text = tokens("a man rides a horse", "cooking pasta")
    eot = (text == EOT).int().argmax(dim=-1)
    assert (eot < text.shape[1] - 1).all()  # there is padding after EOT
    features = model.encode_text(text)
    torch.testing.assert_close(features, F.normalize(model.clip.encode_text(text), dim=-1), rtol=0, atol=0)

    after = text.clone()
    after[torch.arange(2), eot + 1] = 320  # "a": an ordinary token in the padding
    torch.testing.assert_close(model.encode_text(after), features)

    before = text.clone()
    before[:, 1] = 2368  # "cat"
    assert (model.encode_text(before) - features).abs().max() > 1e-4


def test_tokenize_cuts_captions_to_the_caption_length_and_pads_to_the_context():
    """tokenize cuts a long caption to caption_length tokens, EOT last, and pads with zeros to the full context;
    a caption that fits is tokenised as open_clip does; without a caption length it is open_clip's tokeniser."""
    longest = " ".join(["horse"] * 30)  # longer than the context: open_clip cuts it too
    captions = [LONG, "a cat", longest]
    full = tokens(*captions)
    assert torch.equal(make_model("meanP").tokenize(captions), full)
    assert full[2, CONTEXT - 1] == EOT

    cut = make_model("meanP", caption_length=6).tokenize(captions)
    assert cut.shape == (3, CONTEXT) and cut.dtype == full.dtype
    for row in (0, 2):
        assert torch.equal(cut[row, :5], full[row, :5])  # SOT and the first 4 words
        assert cut[row, 5] == EOT
        assert not cut[row, 6:].any()
    assert torch.equal(cut[1], full[1])  # "a cat" fits: SOT a cat EOT

    assert torch.equal(make_model("meanP", caption_length=CONTEXT).tokenize(captions), full)
    shortest = make_model("meanP", caption_length=2).tokenize(captions)
    assert shortest[:, :2].tolist() == [[49406, EOT]] * 3 and not shortest[:, 2:].any()


def reference_cut_text_feature(model, cut: torch.Tensor, length: int) -> torch.Tensor:
    """CLIP4Clip's truncation: the text tower run on the first ``length`` tokens alone (positions and causal
    mask cut to them too), its feature taken at EOT, projected and L2-normalised."""
    clip, cut = model.clip, cut[:, :length]
    x = clip.token_embedding(cut) + clip.positional_embedding[:length]
    x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask[:length, :length]))
    eot = (cut == EOT).int().argmax(dim=-1)
    return F.normalize(x[torch.arange(len(cut)), eot] @ clip.text_projection, dim=-1)


@torch.no_grad()
def test_cut_captions_give_clip4clips_truncated_text_features():
    """Padded cut tokens give the text feature of the first caption_length tokens alone (CLIP4Clip's input);
    so captions that differ only after the cut get identical features, which differ without the cut."""
    length = 6
    model = make_model("meanP", caption_length=length)
    captions = [LONG, "a man rides a bicycle down a steep hill", "a man rides"]
    cut = model.tokenize(captions)
    assert cut[:, :length].tolist()[2] == tokens("a man rides")[0, :length].tolist()  # it fits: not cut
    features = model.encode_text(cut)
    torch.testing.assert_close(features, reference_cut_text_feature(model, cut, length), rtol=1e-5, atol=1e-5)

    assert torch.equal(features[0], features[1])  # "a man rides a" is all that is left of both
    assert (features[0] - features[2]).abs().max() > 1e-4
    uncut = model.encode_text(tokens(*captions))
    assert (uncut[0] - uncut[1]).abs().max() > 1e-4
    assert torch.equal(uncut[2], features[2])


@pytest.mark.parametrize(
    ("model", "caption_length", "limit"),
    [(MODEL, 1, 16), (MODEL, 17, 16), (MODEL, 0, 16), (MODEL, -4, 16), ("vidret-tiny", 33, 32), ("ViT-B-32", 78, 77)],
)
def test_caption_length_out_of_range_is_a_one_line_error(model, caption_length, limit):
    """A caption length below 2 (SOT and EOT) or above the model's context length is refused, before the
    model is built, with a one-line VidretError naming the option and the range."""
    with pytest.raises(VidretError) as error:
        create_clip4clip(model, "none", "meanP", caption_length)
    assert_one_line(error.value, f"--caption-length {caption_length}", model, f"2 to {limit}")


def test_caption_length_needs_a_causal_text_tower_pooled_at_eot(extra_models):
    """On a bidirectional text tower, the zeros after a cut caption would change its feature: refused."""
    with pytest.raises(VidretError) as error:
        create_clip4clip(BIDIRECTIONAL, "none", "meanP", 8)
    assert_one_line(error.value, "--caption-length", "causal", BIDIRECTIONAL)
    assert create_clip4clip(BIDIRECTIONAL, "none", "meanP").spec.caption_length is None


def test_logit_scale_has_a_gradient_at_the_bound_and_is_clamped_after_a_step():
    """The forward pass does not clamp the scale: at the bound (log 100 in float32, whose exp is just over 100)
    the loss still has a gradient for it, as in CLIP4Clip. clamp_logit_scale(100) brings the parameter back to
    log(100) after a step and leaves smaller values alone; None (MMAction2, which never clamps) leaves any."""
    model = make_model("meanP")
    with torch.no_grad():
        model.clip.logit_scale.fill_(math.log(100))
    videos, texts, scale = model(random_frames(3, 2), tokens("a cat", "a dog", "a horse"))
    assert scale.item() > 100
    ClipLoss()(videos, texts, scale).backward()
    assert model.clip.logit_scale.grad.abs().item() > 1e-6

    with torch.no_grad():
        model.clip.logit_scale.fill_(math.log(500))
    model.clamp_logit_scale(None)
    assert model.logit_scale().item() == pytest.approx(500, rel=1e-5)
    model.clamp_logit_scale(100.0)
    assert model.clip.logit_scale.item() == pytest.approx(math.log(100), abs=1e-6)
    with torch.no_grad():
        model.clip.logit_scale.fill_(math.log(20))
    model.clamp_logit_scale(100.0)
    assert model.logit_scale().item() == pytest.approx(20, rel=1e-5)


def test_pretrained_file_loads_exact_clip_weights(tmp_path):
    """--pretrained PATH loads that file's open_clip weights into model.clip, every tensor exactly."""
    torch.manual_seed(123)
    weights = open_clip.create_model(MODEL).state_dict()
    path = tmp_path / "micro.pt"
    torch.save(weights, path)

    torch.manual_seed(0)  # a different random init: only loading the file can make them equal
    model = create_clip4clip(MODEL, str(path), "seqLSTM")
    assert_state_dicts_equal(model.clip.state_dict(), weights)
    assert model.spec == ModelSpec(model=MODEL, head="seqLSTM", pretrained=str(path))


def wrong_weights(kind: str, path: Path) -> None:
    """Write a file at ``path`` that is not a vidret-micro state dict."""
    micro = open_clip.create_model(MODEL).state_dict()
    if kind == "missing-key":
        del micro["text_projection"]
        torch.save(micro, path)
    elif kind == "wrong-shape":
        micro["text_projection"] = torch.zeros(DIM, 16)
        torch.save(micro, path)
    elif kind == "tiny-state-dict":
        torch.save(open_clip.create_model("vidret-tiny").state_dict(), path)
    elif kind == "junk-bytes":
        path.write_bytes(b"junk")
    elif kind == "empty-dict":
        torch.save({}, path)
    elif kind == "list":
        torch.save([1, 2, 3], path)


@pytest.mark.parametrize("kind", ["missing-key", "wrong-shape", "tiny-state-dict", "junk-bytes", "empty-dict", "list"])
def test_pretrained_file_of_wrong_weights_is_a_one_line_error(tmp_path, kind):
    """A --pretrained file that does not hold this model's weights gives a one-line VidretError naming the file
    (open_clip raises AssertionError, struct.error, StopIteration or AttributeError for some of these)."""
    path = tmp_path / f"{kind}.pt"
    wrong_weights(kind, path)
    with pytest.raises(VidretError) as error:
        create_clip4clip(MODEL, str(path))
    assert_one_line(error.value, str(path), MODEL)


def test_unknown_model_head_and_tag(monkeypatch, tmp_path):
    """Unknown model names (with close-name suggestions), heads and pretrained tags (listing the real tags)
    are VidretErrors."""
    monkeypatch.chdir(tmp_path)  # so that "no-such-tag" cannot be a file
    with pytest.raises(VidretError) as error:
        create_clip4clip("ViT-B-99")
    assert_one_line(error.value, "ViT-B-99", "Did you mean", "ViT-B-32")

    with pytest.raises(VidretError) as error:
        create_clip4clip(MODEL, "none", "seqGRU")
    assert_one_line(error.value, "seqGRU", *HEADS)

    with pytest.raises(VidretError) as error:
        create_clip4clip("ViT-B-32", "no-such-tag")
    assert_one_line(error.value, "no-such-tag", "openai", "laion2b_s34b_b79k")


OFFLINE_FETCH = textwrap.dedent(
    """
    import time
    from pipeline.encode.model import create_clip4clip
    from pipeline.errors import VidretError
    start = time.monotonic()
    try:
        create_clip4clip("ViT-B-32", "openai")
    except VidretError as error:
        print("VidretError:", error)
    else:
        print("no error")
    print(f"seconds: {time.monotonic() - start:.1f}")
    """
)


@pytest.fixture(scope="module", autouse=True)
def offline_fetch(tmp_path_factory):
    """Start ``create_clip4clip("ViT-B-32", "openai")`` offline, with an empty Hugging Face cache, in a fresh
    interpreter; it runs (mostly importing torch and open_clip, ~9 s) while the other tests do.

    huggingface_hub reads HF_HUB_OFFLINE and HF_HOME once, at import, so setting them in this process is too
    late: it then retries for ~45 s. Hence the subprocess.
    """
    folder = tmp_path_factory.mktemp("offline")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(folder / "hf"), PYTHONPATH=str(PROJECT), OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-c", OFFLINE_FETCH],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield process
    if process.poll() is None:  # the test was deselected or failed early
        process.kill()
    process.communicate()


def test_unavailable_tag_offline_says_to_pass_a_file(offline_fetch):
    """With no network and an empty cache, an open_clip tag fails fast (well under huggingface_hub's ~45 s of
    retries) with a one-line VidretError that says to pass a local file with --pretrained; first, vidret said
    in one line that it builds OpenAI's ViT-B-32 weights' QuickGELU."""
    stdout, stderr = offline_fetch.communicate(timeout=120)
    assert offline_fetch.returncode == 0, stderr[-2000:]
    notes = [line for line in stderr.splitlines() if "QuickGELU" in line]
    assert notes == ["vidret: ViT-B-32's 'openai' weights were trained with QuickGELU; building ViT-B-32 with"
                     " QuickGELU (as ViT-B-32-quickgelu)"], stderr[-2000:]  # fmt: skip
    lines = stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("VidretError: "), stdout
    message = lines[0]
    for needle in ("'openai'", "ViT-B-32", "--pretrained"):
        assert needle in message, message
    seconds = float(lines[1].removeprefix("seconds: "))
    assert seconds < 20, f"the offline failure took {seconds} s"


def perturbed_model(head: str, pretrained: str, caption_length: int | None = None, **options):
    """A model whose weights differ from any fresh initialisation."""
    torch.manual_seed(1)
    model = create_clip4clip(MODEL, pretrained, head, caption_length, **options)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
        model.clip.logit_scale.fill_(math.log(50))
    return model.eval()


@pytest.mark.parametrize("head", HEADS)
def test_checkpoint_round_trip(tmp_path, head):
    """save_checkpoint(model_state(model)) then load_model rebuilds the same spec and every weight exactly,
    without the --pretrained file the model was first built from."""
    weights = tmp_path / "clip.pt"
    torch.save(open_clip.create_model(MODEL).state_dict(), weights)
    model = perturbed_model(head, str(weights))
    path = tmp_path / "model" / "best.pt"
    path.parent.mkdir()
    save_checkpoint(path, model_state(model))
    weights.unlink()

    loaded, payload = load_model(path)
    assert payload["spec"] == model.spec.to_dict()
    assert loaded.spec == model.spec == ModelSpec(model=MODEL, head=head, pretrained=str(weights))
    assert_state_dicts_equal(loaded.state_dict(), model.state_dict())
    frames, text = random_frames(2, 3), tokens("a cat", "a dog")
    with torch.no_grad():
        actual, expected = loaded.eval()(frames, text), model(frames, text)
        if head in PAIR_HEADS:  # the pair head's inputs, and its scores of them
            actual, expected = (
                (*vars(features).values(), score_matrix(net.head, features))
                for net, features in ((loaded, actual), (model, expected))
            )
        for actual_part, expected_part in zip(actual, expected, strict=True):
            assert torch.equal(actual_part, expected_part)
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.pt"]  # no temporary file left behind


def test_checkpoint_keeps_the_caption_length(tmp_path):
    """A checkpoint saved with a caption length loads with it, and cuts captions as the saved model did."""
    model = perturbed_model("meanP", "none", caption_length=6)
    path = tmp_path / "best.pt"
    save_checkpoint(path, model_state(model))
    loaded, payload = load_model(path)
    assert payload["spec"]["caption_length"] == 6
    assert loaded.spec == model.spec == ModelSpec(model=MODEL, head="meanP", pretrained="none", caption_length=6)
    text = loaded.tokenize([LONG, "a dog"])
    assert torch.equal(text, model.tokenize([LONG, "a dog"])) and text[0, 5] == EOT
    with torch.no_grad():
        assert torch.equal(loaded.eval().encode_text(text), model.encode_text(text))


def test_checkpoint_of_an_earlier_vidret_loads_as_it_was_built(tmp_path):
    """The first checkpoints' spec held only the model, head and weights: they load with what those versions
    ran: the full context length, the activation the model name says, amp, CLIP4Clip's frame pooling."""
    model = perturbed_model("seqLSTM", "none")
    state = model_state(model)
    old_spec = {key: state["spec"][key] for key in ("model", "head", "pretrained")}
    path = tmp_path / "old.pt"
    save_checkpoint(path, {**state, "spec": old_spec})
    loaded, _ = load_model(path)
    assert loaded.spec == ModelSpec(model=MODEL, head="seqLSTM", pretrained="none")
    assert (loaded.spec.caption_length, loaded.spec.force_quick_gelu) == (None, False)
    assert (loaded.spec.precision, loaded.spec.normalize_frames) == ("amp", True)
    assert torch.equal(loaded.tokenize([LONG]), tokens(LONG))
    assert_state_dicts_equal(loaded.state_dict(), model.state_dict())


def test_read_checkpoint_rejects_other_files(tmp_path):
    """read_checkpoint refuses junk bytes, a plain open_clip state dict and a missing file with a
    one-line VidretError naming the file."""
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    plain = tmp_path / "open_clip.pt"
    torch.save(open_clip.create_model(MODEL).state_dict(), plain)

    for path, needle in [(junk, "not a readable checkpoint"), (plain, "not a vidret checkpoint")]:
        with pytest.raises(VidretError) as error:
            read_checkpoint(path)
        assert_one_line(error.value, str(path), needle)
        with pytest.raises(VidretError):
            load_model(path)

    with pytest.raises(VidretError) as error:
        read_checkpoint(tmp_path / "missing.pt")
    assert_one_line(error.value, "missing.pt", "no such checkpoint")


def test_read_checkpoint_error_for_unsafe_pickle_is_one_line(tmp_path):
    """A checkpoint holding objects weights_only loading refuses (here an argparse.Namespace, as some
    trainers save) gives a one-line VidretError, not torch's multi-line explanation."""
    path = tmp_path / "namespace.pt"
    torch.save({"format": "vidret-clip4clip", "args": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(VidretError) as error:
        read_checkpoint(path)
    assert_one_line(error.value, str(path), "not a readable checkpoint")


@pytest.mark.parametrize(
    ("name", "needle"), [(NARROW, "width 32"), (SHALLOW, "needs 4 text layers")], ids=["narrow", "shallow"]
)
def test_seq_transformer_needs_matching_text_transformer(extra_models, name, needle):
    """seqTransf on a model whose text width differs from embed_dim, or with fewer than 4 text layers, is a
    VidretError; meanP and seqLSTM build and run on the same model."""
    with pytest.raises(VidretError) as error:
        create_clip4clip(name, "none", "seqTransf")
    assert_one_line(error.value, needle)

    embed_dim = open_clip.get_model_config(name)["embed_dim"]
    for head in ("meanP", "seqLSTM"):
        with torch.no_grad():
            assert make_model(head, name).encode_video(random_frames(1, 2)).shape == (1, embed_dim)


def test_autocast_is_full_precision_on_cpu():
    """On the CPU, amp computes in float32: inside the model's autocast no autocast is enabled, and an amp
    model's video and text features are float32 and equal, bit for bit, those of an fp32 model with the same
    weights. A bf16 autocast would change them (checked last, so the comparison is known to see it)."""
    frames, captions = random_frames(2, 3), tokens(LONG, "a dog")
    features = {}
    for precision in ("amp", "fp32"):
        torch.manual_seed(0)
        model = create_clip4clip(MODEL, "none", "seqTransf", precision=precision).eval()
        with torch.no_grad(), model.autocast():
            assert not torch.is_autocast_enabled("cpu") and not torch.is_autocast_enabled("cuda")
            features[precision] = model.encode_video(frames), model.encode_text(captions)
    for amp, fp32 in zip(features["amp"], features["fp32"], strict=True):
        assert amp.dtype == fp32.dtype == torch.float32
        assert torch.equal(amp, fp32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model.encode_video(frames), model.encode_text(captions)
    for lower, fp32 in zip(bf16, features["fp32"], strict=True):
        assert not torch.equal(lower.float(), fp32)


# Fidelity to the references: activations, precision, pooling, padded frames, seqTransf's norms, tokens.


def activation_types(module: torch.nn.Module) -> set[str]:
    """The class names of every activation module inside ``module`` (open_clip's MLPs hold one each)."""
    return {type(m).__name__ for m in module.modules() if type(m).__name__ in ("GELU", "QuickGELU")}


def test_openai_tags_say_quick_gelu_and_vidret_builds_it_without_downloading():
    """open_clip's pretrained config says QuickGELU for OpenAI's (and LAION-400M's) ViT-B-32 weights and GELU
    for the others; the -quickgelu model needs nothing forced. Built as a tag would build it (nothing is
    downloaded: the decision is read from the pretrained config), every tower and seqTransf's copied blocks
    run QuickGELU, and the spec records it for the checkpoint."""
    assert quick_gelu_needed("ViT-B-32", "openai") and quick_gelu_needed("ViT-B-32", "laion400m_e32")
    assert not quick_gelu_needed("ViT-B-32", "laion2b_s34b_b79k")
    assert not quick_gelu_needed("ViT-B-32-quickgelu", "openai")
    assert not quick_gelu_needed("ViT-B-32", "none")

    forced = create_clip4clip("ViT-B-32", "none", "seqTransf", force_quick_gelu=quick_gelu_needed("ViT-B-32", "openai"))
    assert forced.spec.force_quick_gelu
    for part in (forced.clip.visual, forced.clip.transformer, forced.head):
        assert activation_types(part) == {"QuickGELU"}, part
    assert activation_types(create_clip4clip("ViT-B-32", "none", "meanP").clip) == {"GELU"}


def test_reproduction_defaults_build_quick_gelu_towers():
    """Every benchmark definition names a model that, with its weights, builds QuickGELU towers and heads."""
    from pipeline.datasets import available_datasets, load_definition

    choices = {
        (load_definition(name).defaults["model"], load_definition(name).defaults["pretrained"])
        for name in available_datasets()
    }
    assert choices == {("ViT-B-32-quickgelu", "openai")}
    ((model, pretrained),) = choices
    assert pretrained in open_clip.list_pretrained_tags_by_model(model)
    built = create_clip4clip(model, "none", "seqTransf", force_quick_gelu=quick_gelu_needed(model, pretrained))
    for part in (built.clip.visual, built.clip.transformer, built.head):
        assert activation_types(part) == {"QuickGELU"}, part


def test_a_local_weights_file_with_a_gelu_model_name_is_warned_about(extra_models, tmp_path, caplog):
    """The file's weights might have been trained with QuickGELU: vidret cannot tell, so it says which model
    name builds QuickGELU, in one line; with that name there is nothing to say."""
    path = tmp_path / "weights.pt"
    torch.save(open_clip.create_model(GELU_TWIN).state_dict(), path)
    with caplog.at_level("WARNING", logger="pipeline.encode.model"):
        create_clip4clip(GELU_TWIN, str(path))
    (warning,) = [record.getMessage() for record in caplog.records if record.name == "pipeline.encode.model"]
    assert "\n" not in warning and f"--model {GELU_TWIN}-quickgelu" in warning and str(path) in warning
    caplog.clear()
    with caplog.at_level("WARNING", logger="pipeline.encode.model"):
        model = create_clip4clip(f"{GELU_TWIN}-quickgelu", str(path))
    assert not [record for record in caplog.records if record.name == "pipeline.encode.model"]
    assert activation_types(model.clip) == {"QuickGELU"}


def openai_half_precision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI's convert_weights, written from its rule: the weights and biases of linear and convolution
    layers, of attention's input projection, and the text and image projections become fp16."""
    half = ("conv1.weight", "in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias", "c_fc.weight",
            "c_fc.bias", "c_proj.weight", "c_proj.bias", "text_projection", "visual.proj")  # fmt: skip
    return {name: tensor.half() if name.endswith(half) else tensor for name, tensor in state.items()}


@torch.no_grad()
def test_fp16_towers_are_openais_half_precision_clip(tmp_path):
    """precision fp16 rounds exactly the weights OpenAI's convert_weights does (norms, embeddings and the logit
    scale stay fp32), keeps the head in fp32, gives float32 unit features close to the fp32 model's, and
    survives a checkpoint round trip."""
    torch.manual_seed(0)
    full = create_clip4clip(MODEL, "none", "seqTransf").eval()
    weights = tmp_path / "clip.pt"
    torch.save(full.clip.state_dict(), weights)
    half = create_clip4clip(MODEL, str(weights), "seqTransf", precision="fp16").eval()
    expected = openai_half_precision(full.clip.state_dict())
    for name, tensor in half.clip.state_dict().items():
        assert tensor.dtype == expected[name].dtype and torch.equal(tensor, expected[name]), name
    assert {p.dtype for p in half.head.parameters()} == {torch.float32}

    frames, text = random_frames(2, 3), tokens("a cat", "a dog")
    for got, want in zip(half(frames, text), full(frames, text), strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0, atol=2e-2)
    path = tmp_path / "half.pt"
    save_checkpoint(path, model_state(half))
    loaded, _ = load_model(path)
    assert loaded.spec.precision == "fp16"
    assert_state_dicts_equal(loaded.state_dict(), half.state_dict())


@torch.no_grad()
@pytest.mark.parametrize("head", DUAL_HEADS)
def test_padded_frames_are_masked_out_of_every_head(head):
    """A video the sampling padded (zero frames after its real ones, mask False there) gets exactly the feature
    of its real frames alone, as CLIP4Clip's masked pooling, packed LSTM and key-masked transformer give;
    the same frames unmasked give another."""
    model = make_model(head)
    frames = random_frames(2, 5, seed=3)
    padded = frames.clone()
    padded[0, 3:] = 0  # video 0 has 3 real frames, video 1 all 5
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    features = model.encode_video(padded, mask)
    torch.testing.assert_close(features[0], model.encode_video(frames[:1, :3])[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(features[1], model.encode_video(frames[1:])[0], rtol=1e-5, atol=1e-6)
    assert (model.encode_video(padded)[0] - features[0]).abs().max() > 1e-4


@torch.no_grad()
def test_frame_pooling_follows_clip4clip_or_mmaction2():
    """normalize_frames (CLIP4Clip's meanP): L2-normalise each frame feature, average, normalise; without it
    (MMAction2's SimpleMeanAdapter, then its normalisation): average the raw features, normalise."""
    torch.manual_seed(0)
    clip4clip = create_clip4clip(MODEL, "none", "meanP").eval()
    torch.manual_seed(0)
    mmaction2 = create_clip4clip(MODEL, "none", "meanP", normalize_frames=False).eval()
    frames = random_frames(2, 4)
    features = clip4clip.encode_frames(frames)
    normalized_mean = F.normalize(F.normalize(features, dim=-1).mean(1), dim=-1)
    torch.testing.assert_close(clip4clip.encode_video(frames), normalized_mean)
    torch.testing.assert_close(mmaction2.encode_video(frames), F.normalize(features.mean(1), dim=-1))
    assert (clip4clip.encode_video(frames) - mmaction2.encode_video(frames)).abs().max() > 1e-4


def test_seq_transformer_norms_use_clip4clips_epsilon():
    """seqTransf's copied blocks normalise with CLIP4Clip's TF-style epsilon (1e-12); the text tower keeps
    CLIP's 1e-5."""
    model = make_model("seqTransf")
    head_norms = [m for m in model.head.modules() if isinstance(m, torch.nn.LayerNorm)]
    text_norms = [m for m in model.clip.transformer.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(head_norms) == 2 * SEQ_TRANSFORMER_LAYERS and {m.eps for m in head_norms} == {1e-12}
    assert {m.eps for m in text_norms} == {1e-5}


def clip4clip_tokens(caption: str, max_words: int, encode) -> list[int]:
    """CLIP4Clip's dataloader, written from its rule: SOT, the caption's BPE tokens cut to max_words - 2, EOT,
    zero-padded to max_words."""
    ids = [49406, *encode(caption)[: max_words - 2], EOT]
    return ids + [0] * (max_words - len(ids))


def test_captions_tokenise_as_clip4clip_does_and_special_strings_are_documented():
    """On all 1,000 real MSR-VTT 1k-A captions, vidret's tokens at caption length 32 are CLIP4Clip's: the same
    BPE vocabulary and ids, the same cut. The references' special-token strings differ (CLIP4Clip's
    ``<|endoftext|>``, open_clip's ``<end_of_text>``); no caption holds either, and vidret keeps open_clip's
    tokenizer, which reads its own string as EOT and CLIP4Clip's as text (docs/reproduction.md)."""
    import csv

    with open(PROJECT / "tests/data/msrvtt/MSRVTT_JSFUSION_test.csv", newline="") as handle:
        captions = [row["sentence"] for row in csv.DictReader(handle)]
    assert len(captions) == 1000
    assert not any(special in caption for caption in captions for special in ("<|", "<end_of_text>", "<start_of_text>"))
    torch.manual_seed(0)
    model = create_clip4clip("ViT-B-32-quickgelu", "none", "meanP", 32)
    tokenizer = open_clip.get_tokenizer("ViT-B-32-quickgelu")
    ours = model.tokenize(captions)
    assert not ours[:, 32:].any()
    assert ours[:, :32].tolist() == [clip4clip_tokens(caption, 32, tokenizer.encode) for caption in captions]

    assert tokenizer("a <end_of_text> b")[0, :4].tolist() == [49406, 320, EOT, 321]
    assert tokenizer("a <|endoftext|> b")[0].tolist().index(EOT) > 4  # several BPE tokens, then the real EOT


@pytest.mark.parametrize("head", DUAL_HEADS)
def test_the_3d_linear_patch_starts_as_the_2d_one(head):
    """CLIP4Clip's 3d patch: the patch convolution made 3 frames deep, its centre slice the 2d weights and its
    neighbours zeros, so a fresh 3d model gives the 2d model's features (same seed, same other weights)."""
    flat, deep = make_model(head), make_model(head, linear_patch="3d")
    patch = deep.clip.visual.conv1
    assert isinstance(patch, TemporalPatchEmbedding) and patch.weight.shape[2] == 3
    assert torch.equal(patch.weight[:, :, 1], flat.clip.visual.conv1.weight)
    assert not patch.weight[:, :, 0].any() and not patch.weight[:, :, 2].any()
    frames = random_frames(2, 5)
    with torch.no_grad():
        torch.testing.assert_close(deep.encode_frames(frames), flat.encode_frames(frames), rtol=0, atol=1e-6)
        torch.testing.assert_close(deep.encode_video(frames), flat.encode_video(frames), rtol=0, atol=1e-6)
    assert deep.spec.linear_patch == "3d" and flat.spec.linear_patch == "2d"


@torch.no_grad()
def test_the_3d_linear_patch_sees_the_neighbouring_frames():
    """Once its outer slices are trained, a frame's features depend on the frames beside it and on no other,
    and meanP over them depends on the frames' order, which meanP over 2d patches cannot."""
    flat, deep = make_model("meanP"), make_model("meanP", linear_patch="3d")
    deep.clip.visual.conv1.weight[:, :, 0::2].normal_(std=0.02)
    frames = random_frames(1, 5)
    changed = frames.clone()
    changed[:, 2] = random_frames(1, 1, seed=1)[:, 0]
    difference = (deep.encode_frames(frames) - deep.encode_frames(changed)).abs().amax(dim=-1)[0]
    assert (difference[[1, 2, 3]] > 1e-4).all() and torch.equal(difference[[0, 4]], torch.zeros(2))
    torch.testing.assert_close(flat.encode_video(frames.flip(1)), flat.encode_video(frames))
    assert (deep.encode_video(frames.flip(1)) - deep.encode_video(frames)).abs().max() > 1e-4


def test_a_3d_linear_patch_checkpoint_round_trip(tmp_path):
    """The spec records the patch, and load_model rebuilds the 3d tower with every weight."""
    model = perturbed_model("seqTransf", "none", linear_patch="3d")
    path = tmp_path / "best.pt"
    save_checkpoint(path, model_state(model))
    loaded, payload = load_model(path)
    assert payload["spec"]["linear_patch"] == "3d" and loaded.spec == model.spec
    assert_state_dicts_equal(loaded.state_dict(), model.state_dict())
    frames = random_frames(2, 4)
    with torch.no_grad():
        assert torch.equal(loaded.eval().encode_video(frames), model.encode_video(frames))


@pytest.mark.parametrize(
    ("model", "linear_patch", "needles"),
    [
        (MODEL, "4d", ["--linear-patch '4d'", "2d, 3d"]),
        ("RN50", "3d", ["--linear-patch 3d", "RN50's image tower has none", "--linear-patch 2d"]),
        ("convnext_base", "3d", ["convnext_base's image tower has none"]),
    ],
)
def test_an_impossible_linear_patch_is_a_one_line_error_before_any_weights(model, linear_patch, needles):
    """Checked from the model's config: nothing is built or fetched (RN50's tag would need the network)."""
    with pytest.raises(VidretError) as error:
        check_model_choice(model, "openai" if model == "RN50" else "none", "meanP", linear_patch=linear_patch)
    assert_one_line(error.value, *needles)
