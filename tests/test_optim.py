"""The references' optimisation (pipeline.encode.optim): BertAdam against its published update rule, the two
learning-rate schedules, and which parameters are frozen and decayed on real vidret-micro models."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from pipeline.encode.model import create_clip4clip
from pipeline.encode.optim import (
    BertAdam,
    decay_table,
    freeze_clip_layers,
    lr_factor,
    make_optimizer,
    parameter_groups,
)
from pipeline.errors import VidretError

MODEL = "vidret-micro"  # 1 image block, 4 text blocks
PROJECT = Path(__file__).resolve().parents[1]
MICRO_CONFIG = json.loads((PROJECT / "pipeline/encode/model_configs/vidret-micro.json").read_text())
CUSTOM_TEXT = "vidret-test-optim-custom-text"  # open_clip's CustomTextCLIP: the text tower under .text
LOGIT_BIAS = "vidret-test-optim-logit-bias"  # a CLIP with SigLIP's logit_bias, a name the freezing rule lacks

# CLIP4Clip's BertAdam settings; the toy run's two groups' learning rates and weight decays, and the group
# of each toy parameter.
BETAS = (0.9, 0.98)
EPS = 1e-6
MAX_GRAD_NORM = 1.0
TOY_LRS = (1e-2, 1e-3)
TOY_WEIGHT_DECAYS = (0.2, 0.0)
TOY_GROUP_OF = (0, 1, 0)
TOY_STEPS = 8
TOY_WARMUP = 0.3  # steps 0, 1, 2 warm up


@pytest.fixture(scope="module")
def extra_models(tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("open_clip_configs")
    for name, change in {CUSTOM_TEXT: {"custom_text": True}, LOGIT_BIAS: {"init_logit_bias": -10.0}}.items():
        path = folder / f"{name}.json"
        path.write_text(json.dumps({**MICRO_CONFIG, **change}))
        open_clip.add_model_config(path)


def make_model(head: str, model: str = MODEL):
    torch.manual_seed(0)
    return create_clip4clip(model, "none", head)


# -- BertAdam ---------------------------------------------------------------------------------


def toy_gradients(steps: int, seed: int = 0) -> list[list[np.ndarray]]:
    """Each step's gradients of the toy parameters (3×4, 5, scalar); the 3×4 one's norm is well above 1."""
    rng = np.random.default_rng(seed)
    return [[5 * rng.normal(size=(3, 4)), 0.1 * rng.normal(size=5), 0.3 * rng.normal(size=())] for _ in range(steps)]


def toy_initial() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.normal(size=(3, 4)), rng.normal(size=5), rng.normal(size=())]


def bertadam_schedule(progress: float, warmup: float) -> float:
    """BertAdam's built-in warmup_cosine, as published: the reference's learning rate is lr times this."""
    return progress / warmup if progress < warmup else 0.5 * (1 + math.cos(math.pi * progress))


def reference_bertadam(gradients, weight_decays, max_grad_norm: float) -> list[list[np.ndarray]]:
    """The toy parameters after each step of CLIP4Clip's published BertAdam rule, in float64 numpy."""
    params = toy_initial()
    exp_avg = [np.zeros_like(p) for p in params]
    exp_avg_sq = [np.zeros_like(p) for p in params]
    history = []
    for step, grads in enumerate(gradients):
        for i, grad in enumerate(grads):
            lr = TOY_LRS[TOY_GROUP_OF[i]] * bertadam_schedule(step / TOY_STEPS, TOY_WARMUP)
            if max_grad_norm > 0:  # torch's clip_grad_norm_: scale by max / (norm + 1e-6), never up
                grad = grad * min(1.0, max_grad_norm / (np.linalg.norm(grad) + 1e-6))
            exp_avg[i] = BETAS[0] * exp_avg[i] + (1 - BETAS[0]) * grad
            exp_avg_sq[i] = BETAS[1] * exp_avg_sq[i] + (1 - BETAS[1]) * grad * grad
            update = exp_avg[i] / (np.sqrt(exp_avg_sq[i]) + EPS)
            weight_decay = weight_decays[TOY_GROUP_OF[i]]
            if weight_decay > 0:
                update = update + weight_decay * params[i]
            params[i] = params[i] - lr * update
        history.append([p.copy() for p in params])
    return history


def toy_run(make, weight_decays=TOY_WEIGHT_DECAYS, dtype=torch.float64):
    """Toy parameters, an optimiser over them from ``make(groups)`` and the warmup_cosine LambdaLR."""
    params = [torch.tensor(p, dtype=dtype, requires_grad=True) for p in toy_initial()]
    groups = [
        {
            "params": [param for param, group in zip(params, TOY_GROUP_OF, strict=True) if group == index],
            "lr": lr,
            "weight_decay": weight_decay,
        }
        for index, (lr, weight_decay) in enumerate(zip(TOY_LRS, weight_decays, strict=True))
    ]
    optimizer = make(groups)
    scheduler = LambdaLR(optimizer, lambda step: lr_factor(step, TOY_STEPS, "warmup_cosine", TOY_WARMUP, 0.0))
    return params, optimizer, scheduler


def take_step(params, optimizer, scheduler, grads) -> None:
    """One step as vidret's loop takes it: the optimiser, then the schedule."""
    for param, grad in zip(params, grads, strict=True):
        param.grad = torch.tensor(grad, dtype=param.dtype)
    optimizer.step()
    scheduler.step()


def run_toy(make, weight_decays) -> list[list[np.ndarray]]:
    params, optimizer, scheduler = toy_run(make, weight_decays)
    history = []
    for grads in toy_gradients(TOY_STEPS):
        take_step(params, optimizer, scheduler, grads)
        history.append([p.detach().numpy().copy() for p in params])
    return history


def bertadam(max_grad_norm: float = MAX_GRAD_NORM):
    return lambda groups: BertAdam(groups, betas=BETAS, eps=EPS, max_grad_norm=max_grad_norm)


def test_bertadam_follows_the_published_rule_at_every_step():
    gradients = toy_gradients(TOY_STEPS)
    assert all(np.linalg.norm(grads[0]) > 5 * MAX_GRAD_NORM for grads in gradients)  # clipping acts
    assert all(np.linalg.norm(grads[1]) < MAX_GRAD_NORM for grads in gradients)  # and leaves this one alone
    expected = reference_bertadam(gradients, TOY_WEIGHT_DECAYS, MAX_GRAD_NORM)
    got = run_toy(bertadam(), TOY_WEIGHT_DECAYS)
    for step, (got_params, expected_params) in enumerate(zip(got, expected, strict=True)):
        for got_param, expected_param in zip(got_params, expected_params, strict=True):
            np.testing.assert_allclose(got_param, expected_param, rtol=1e-12, atol=1e-14, err_msg=f"step {step}")
    for param, initial in zip(got[0], toy_initial(), strict=True):
        np.testing.assert_array_equal(param, initial)  # the schedule is 0 at step 0: the first update is zero


def test_the_reference_tells_bertadam_from_adamw():
    """Without weight decay and clipping, AdamW differs from BertAdam only by its bias correction."""
    no_decay = (0.0, 0.0)
    expected = reference_bertadam(toy_gradients(TOY_STEPS), no_decay, max_grad_norm=0.0)
    np.testing.assert_allclose(run_toy(bertadam(0.0), no_decay)[-1][0], expected[-1][0], rtol=1e-12)
    adamw = run_toy(lambda groups: torch.optim.AdamW(groups, betas=BETAS, eps=EPS), no_decay)
    for step in range(1, TOY_STEPS):
        assert not np.allclose(adamw[step][0], expected[step][0], rtol=1e-6), f"step {step}"


def test_state_dict_round_trip_continues_exactly():
    gradients = toy_gradients(TOY_STEPS)
    params, optimizer, scheduler = toy_run(bertadam())
    for grads in gradients[:3]:
        take_step(params, optimizer, scheduler, grads)
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "params": params}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # as vidret's checkpoints are read
    resumed_params, resumed, resumed_scheduler = toy_run(bertadam())
    with torch.no_grad():
        for param, saved_param in zip(resumed_params, saved["params"], strict=True):
            param.copy_(saved_param)
    resumed.load_state_dict(saved["optimizer"])
    resumed_scheduler.load_state_dict(saved["scheduler"])
    for grads in gradients[3:]:
        take_step(params, optimizer, scheduler, grads)
        take_step(resumed_params, resumed, resumed_scheduler, grads)
        for param, resumed_param in zip(params, resumed_params, strict=True):
            assert torch.equal(param, resumed_param)


def test_fp16_parameters_keep_fp16_moments():
    params, optimizer, scheduler = toy_run(bertadam(), dtype=torch.float16)
    for grads in toy_gradients(3):
        take_step(params, optimizer, scheduler, grads)
    resumed_params, resumed, _ = toy_run(bertadam(), dtype=torch.float16)
    resumed.load_state_dict(optimizer.state_dict())
    for run_params, run in ((params, optimizer), (resumed_params, resumed)):
        for param in run_params:
            state = run.state[param]
            assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float16
            assert torch.isfinite(param).all()
    assert not torch.equal(params[0], torch.tensor(toy_initial()[0], dtype=torch.float16))


# -- schedules --------------------------------------------------------------------------------


def test_warmup_cosine_is_bertadams_schedule():
    """Linear from 0 over the first 10% of steps; the cosine runs over the whole run, so it starts at 0.976."""
    total = 100
    factors = [lr_factor(step, total, "warmup_cosine", 0.1, 0.0) for step in range(total + 1)]
    assert factors[0] == 0
    np.testing.assert_allclose(factors[:10], np.arange(10) / 10, rtol=1e-12)
    assert factors[10] == pytest.approx(0.5 * (1 + math.cos(0.1 * math.pi))) == pytest.approx(0.9755, abs=1e-4)
    assert all(later < earlier for earlier, later in zip(factors[10:], factors[11:], strict=False))
    assert factors[total] == 0
    for step in range(total):
        assert factors[step] == bertadam_schedule(step / total, 0.1)


def mmengine_linear_factors(start: float, total_iters: int) -> list[float]:
    """mmengine LinearLR's chainable form: each step multiplies the previous factor."""
    factors = [start]
    for step in range(1, total_iters + 1):
        factors.append(factors[-1] * (1 + (1 - start) / (total_iters * start + (step - 1) * (1 - start))))
    return factors


def test_linear_then_cosine_is_mmengines_schedule():
    total, start = 100, 0.05
    warmup_steps = 10  # MMAction2's 0.5 of 5 epochs
    factors = [lr_factor(step, total, "linear_then_cosine", 0.1, start) for step in range(total + 1)]
    assert factors[0] == start
    # LinearLR(begin=0, end=W) runs total_iters = W - 1 steps after its first.
    np.testing.assert_allclose(factors[:warmup_steps], mmengine_linear_factors(start, warmup_steps - 1), rtol=1e-12)
    assert factors[warmup_steps - 1] == pytest.approx(1.0) and factors[warmup_steps] == 1.0
    assert factors[warmup_steps + 45] == pytest.approx(0.5)  # halfway through the cosine
    assert all(
        later < earlier for earlier, later in zip(factors[warmup_steps:], factors[warmup_steps + 1 :], strict=False)
    )
    assert factors[total] == 0


def test_linear_then_cosine_counts_warmup_steps_as_mmengine_does():
    """mmengine truncates the warm-up's end to a whole step: 0.1 of 95 steps is 9 steps, and 0.29 of 100 is 29."""
    assert lr_factor(8, 95, "linear_then_cosine", 0.1, 0.05) == pytest.approx(1.0)
    assert lr_factor(9, 95, "linear_then_cosine", 0.1, 0.05) == 1.0
    assert lr_factor(28, 100, "linear_then_cosine", 0.29, 0.05) == pytest.approx(1.0)
    assert lr_factor(29, 100, "linear_then_cosine", 0.29, 0.05) == 1.0
    assert lr_factor(0, 10, "linear_then_cosine", 0.0, 0.05) == 1.0  # no warm-up: the cosine from step 0


# -- freezing and weight decay on real models ----------------------------------------------------

BLOCK = (
    "ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
    "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
    "mlp.c_proj.bias",
)  # fmt: skip
MMENGINE_BLOCK_NO_DECAY = (
    "ln_1.weight", "ln_1.bias", "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.bias", "mlp.c_proj.bias",
)  # fmt: skip
CLIP4CLIP_BLOCK_NO_DECAY = (
    "ln_1.bias", "attn.in_proj_bias", "attn.out_proj.bias", "ln_2.bias", "mlp.c_fc.bias", "mlp.c_proj.bias",
)  # fmt: skip
IMAGE_BLOCKS = ["clip.visual.transformer.resblocks.0"]
TEXT_BLOCKS = [f"clip.transformer.resblocks.{index}" for index in range(4)]
HEAD_BLOCKS = [f"head.blocks.{index}" for index in range(4)]  # seqTransf's
LSTM_BIASES = {"head.lstm.bias_ih_l0", "head.lstm.bias_hh_l0"}  # seqLSTM's, decayed under mmengine's rule

FROZEN_AT_0 = {
    "clip.positional_embedding",
    "clip.token_embedding.weight",
    "clip.visual.class_embedding",
    "clip.visual.positional_embedding",
    "clip.visual.conv1.weight",
    "clip.visual.ln_pre.weight",
    "clip.visual.ln_pre.bias",
}


def block_names(blocks: list[str], suffixes: tuple[str, ...] = BLOCK) -> set[str]:
    return {f"{block}.{suffix}" for block in blocks for suffix in suffixes}


# vidret-micro has one image block, so freezing 2 layers freezes all of it and the first two text blocks.
FROZEN_AT_2 = FROZEN_AT_0 | block_names(IMAGE_BLOCKS) | block_names(TEXT_BLOCKS[:2])

CLIP_NO_DECAY = {
    "mmengine": {
        "clip.visual.ln_pre.weight", "clip.visual.ln_pre.bias", "clip.visual.ln_post.weight",
        "clip.visual.ln_post.bias", "clip.ln_final.weight", "clip.ln_final.bias",
    }
    | block_names(IMAGE_BLOCKS + TEXT_BLOCKS, MMENGINE_BLOCK_NO_DECAY),
    "clip4clip": {"clip.visual.ln_pre.bias", "clip.visual.ln_post.bias", "clip.ln_final.bias"}
    | block_names(IMAGE_BLOCKS + TEXT_BLOCKS, CLIP4CLIP_BLOCK_NO_DECAY),
}  # fmt: skip
HEAD_NO_DECAY = {
    ("seqTransf", "mmengine"): block_names(HEAD_BLOCKS, MMENGINE_BLOCK_NO_DECAY),
    ("seqTransf", "clip4clip"): block_names(HEAD_BLOCKS, CLIP4CLIP_BLOCK_NO_DECAY),
    ("seqLSTM", "mmengine"): set(),
    ("seqLSTM", "clip4clip"): LSTM_BIASES,
}


@pytest.mark.parametrize("head", ["seqTransf", "seqLSTM"])
@pytest.mark.parametrize("num_layers, expected", [(0, FROZEN_AT_0), (2, FROZEN_AT_2)])
def test_freeze_clip_layers(head, num_layers, expected):
    model = make_model(head)
    frozen = freeze_clip_layers(model, num_layers)
    assert set(frozen) == expected
    assert {name for name, param in model.named_parameters() if not param.requires_grad} == expected


@pytest.mark.parametrize("num_layers", [-1, None])
def test_freezing_minus_one_layers_freezes_nothing(num_layers):
    model = make_model("seqTransf")
    assert freeze_clip_layers(model, num_layers) == []
    assert all(param.requires_grad for param in model.parameters())


def test_freezing_every_block_is_allowed():
    model = make_model("meanP")
    frozen = freeze_clip_layers(model, 4)  # the text tower's depth, the deeper one
    assert set(frozen) == FROZEN_AT_0 | block_names(IMAGE_BLOCKS + TEXT_BLOCKS)


@pytest.mark.parametrize("rule", ["mmengine", "clip4clip"])
@pytest.mark.parametrize("head", ["seqTransf", "seqLSTM"])
def test_decay_table(head, rule):
    model = make_model(head)
    table = decay_table(model, rule)
    assert list(table) == [name for name, _ in model.named_parameters()]
    assert {name for name, decayed in table.items() if not decayed} == CLIP_NO_DECAY[rule] | HEAD_NO_DECAY[head, rule]


@pytest.mark.parametrize("rule", ["mmengine", "clip4clip"])
def test_decay_table_leaves_out_frozen_parameters(rule):
    model = make_model("seqLSTM")
    frozen = freeze_clip_layers(model, 2)
    table = decay_table(model, rule)
    assert set(table) == {name for name, _ in model.named_parameters()} - set(frozen)
    assert {name for name, decayed in table.items() if not decayed} == (
        CLIP_NO_DECAY[rule] | HEAD_NO_DECAY["seqLSTM", rule]
    ) - set(frozen)


@pytest.mark.parametrize("rule", ["mmengine", "clip4clip"])
def test_parameter_groups(rule):
    model = make_model("seqLSTM")
    frozen = set(freeze_clip_layers(model, 0))
    groups = parameter_groups(model, lr=1e-4, clip_lr=1e-7, weight_decay=0.2, no_decay=rule)
    names = {id(param): name for name, param in model.named_parameters()}
    got = {group["name"]: {names[id(param)] for param in group["params"]} for group in groups}
    trainable = {name for name, _ in model.named_parameters()} - frozen
    no_decay = CLIP_NO_DECAY[rule] | HEAD_NO_DECAY["seqLSTM", rule]
    lstm = {"head.lstm.weight_ih_l0", "head.lstm.weight_hh_l0"} | LSTM_BIASES
    assert got == {
        "clip/decay": {name for name in trainable - no_decay if name.startswith("clip.")},
        "head/decay": lstm - HEAD_NO_DECAY["seqLSTM", rule],
        "clip/no_decay": {name for name in trainable & no_decay if name.startswith("clip.")},
        "head/no_decay": HEAD_NO_DECAY["seqLSTM", rule],
    }
    rates = [(group["lr"], group["weight_decay"]) for group in groups]
    assert rates == [(1e-7, 0.2), (1e-4, 0.2), (1e-7, 0.0), (1e-4, 0.0)]
    assert parameter_groups(model, 1e-4, None, 0.2, rule)[0]["lr"] == 1e-4  # no CLIP rate: the head's


@pytest.mark.parametrize("name", ["adamw", "bertadam"])
def test_optimizers_train_only_trainable_parameters(name):
    """meanP has no parameters, so both head groups are empty; frozen parameters stay as they are."""
    model = make_model("meanP")
    frozen = set(freeze_clip_layers(model, 0))
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    optimizer = make_optimizer(name, parameter_groups(model, 1e-4, 1e-5, 0.2, "mmengine"), BETAS, EPS)
    for param in model.parameters():
        param.grad = torch.ones_like(param) if param.requires_grad else None
    optimizer.step()
    for param_name, param in model.named_parameters():
        assert torch.equal(param, before[param_name]) == (param_name in frozen), param_name


# -- refusals -----------------------------------------------------------------------------------


def one_line_error(function, *args, match: str) -> None:
    with pytest.raises(VidretError, match=match) as error:
        function(*args)
    assert "\n" not in str(error.value)


@pytest.mark.usefixtures("extra_models")
def test_freezing_refuses_other_clip_classes():
    model = make_model("meanP", CUSTOM_TEXT)
    one_line_error(freeze_clip_layers, model, 0, match="needs open_clip's CLIP class.*CustomTextCLIP")
    assert freeze_clip_layers(model, -1) == []  # freezing nothing needs no names


@pytest.mark.usefixtures("extra_models")
def test_freezing_refuses_names_outside_the_rule():
    model = make_model("meanP", LOGIT_BIAS)
    one_line_error(freeze_clip_layers, model, 0, match="also freeze logit_bias,")
    assert all(param.requires_grad for param in model.parameters())  # nothing half-frozen


@pytest.mark.parametrize("num_layers", [5, -2])
def test_freezing_refuses_layer_counts_beyond_the_towers(num_layers):
    model = make_model("meanP")
    one_line_error(freeze_clip_layers, model, num_layers, match=rf"cannot freeze {num_layers} .* -1 \(none\) to 4")
    assert all(param.requires_grad for param in model.parameters())


def test_unknown_choices_are_refused():
    model = make_model("meanP")
    one_line_error(lr_factor, 0, 10, "cosine", 0.1, 0.0, match="unknown schedule 'cosine'; choose one of")
    one_line_error(lr_factor, 0, 10, "warmup_cosine", 0.1, 0.05, match="warms up from 0")
    one_line_error(decay_table, model, "timm", match="unknown no-decay rule 'timm'")
    one_line_error(make_optimizer, "sgd", [{"params": list(model.parameters())}], BETAS, EPS, match="unknown optim")
    groups = parameter_groups(model, 1e-4, None, 0.2, "mmengine")
    one_line_error(make_optimizer, "adamw", groups, BETAS, EPS, 1.0, match="AdamW has no such step")
    one_line_error(BertAdam, groups, -1.0, match="BertAdam: lr -1.0")
    one_line_error(BertAdam, groups, 1e-4, (0.9, 1.0), match=r"betas \(0.9, 1.0\) in \[0, 1\)")
