"""The two references' optimisation: optimisers, learning-rate schedules, weight-decay groups, layer freezing.

MMAction2's CLIP4Clip trains with torch's AdamW, no decay on normalisation layers and on
parameters named ``bias`` (mmengine's ``paramwise_cfg``), and mmengine's LinearLR warm-up
then CosineAnnealingLR. CLIP4Clip trains with its BertAdam, no decay on names containing
``bias``, and BertAdam's ``warmup_cosine``. Both freeze CLIP's embeddings and its lowest
blocks by the same rule. Everything here is written from those published rules.

Use: ``freeze_clip_layers``, then ``parameter_groups`` (trainable parameters only), then
``make_optimizer``, with ``lr_factor`` as the ``torch.optim.lr_scheduler.LambdaLR`` schedule.
"""

from __future__ import annotations

import math

import open_clip
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from pipeline.errors import VidretError

SCHEDULES = ("linear_then_cosine", "warmup_cosine")
NO_DECAY_RULES = ("mmengine", "clip4clip")
OPTIMIZERS = ("adamw", "bertadam")

# mmengine's DefaultOptimWrapperConstructor counts these as normalisation layers.
MMENGINE_NORM_TYPES = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm)
# CLIP4Clip's no_decay list; CLIP's norms are ln_*, so in practice only names containing "bias" match.
CLIP4CLIP_NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight")

# The freezing rule of both references, on CLIP's own parameter names.
ALWAYS_TRAINED = ("ln_final.", "text_projection", "logit_scale", "visual.ln_post.", "visual.proj")
BLOCK_PREFIXES = ("visual.transformer.resblocks.", "transformer.resblocks.")
# What the rule freezes besides blocks in an OpenAI-style CLIP; anything else frozen means other names.
FROZEN_STEM = frozenset(
    {
        "positional_embedding",
        "token_embedding.weight",
        "visual.class_embedding",
        "visual.positional_embedding",
        "visual.conv1.weight",
        "visual.ln_pre.weight",
        "visual.ln_pre.bias",
    }
)


class BertAdam(torch.optim.Optimizer):
    """CLIP4Clip's BertAdam (its ``modules/optimization.py``): Adam without bias correction, weight decay added
    to the update, and each parameter's gradient clipped to ``max_grad_norm`` on its own first.

    The learning rate is the group's ``lr`` at the step; vidret schedules it with LambdaLR and ``lr_factor``,
    which gives the rate BertAdam's built-in schedule gives at every step, so none is built in here.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, max_grad_norm=1.0):
        if lr < 0 or eps < 0 or weight_decay < 0 or max_grad_norm < 0 or not all(0 <= beta < 1 for beta in betas):
            raise VidretError(
                f"BertAdam: lr {lr}, eps {eps}, weight decay {weight_decay} and max_grad_norm {max_grad_norm}"
                f" must be at least 0 and betas {betas} in [0, 1)"
            )
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "max_grad_norm": max_grad_norm}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is not None:
                    self._update(parameter, group)
        return loss

    def _update(self, parameter: torch.Tensor, group: dict) -> None:
        grad = parameter.grad
        if group["max_grad_norm"] > 0:
            nn.utils.clip_grad_norm_(parameter, group["max_grad_norm"])  # in place, this parameter alone
        state = self.state[parameter]
        if not state:
            # In the parameter's dtype, as the reference: fp16 weights keep fp16 moments.
            state["exp_avg"] = torch.zeros_like(parameter)
            state["exp_avg_sq"] = torch.zeros_like(parameter)
        beta1, beta2 = group["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        update = exp_avg / (exp_avg_sq.sqrt() + group["eps"])
        # In the reference's order (decay added to the update, then lr x update), so rounding matches too.
        if group["weight_decay"] > 0:
            update += group["weight_decay"] * parameter
        parameter.sub_(group["lr"] * update)


def make_optimizer(
    name: str, groups: list[dict], betas: tuple[float, float], eps: float, max_grad_norm: float | None = None
) -> torch.optim.Optimizer:
    """torch's AdamW (MMAction2) or BertAdam (CLIP4Clip) over ``parameter_groups``' groups, which carry the
    learning rates and weight decay. ``max_grad_norm`` is BertAdam's per-parameter clipping (None: none); the
    training loop's clipping of the global norm is separate."""
    if name == "adamw":
        if max_grad_norm:
            raise VidretError("max_grad_norm clips each parameter's gradient inside BertAdam; AdamW has no such step")
        return torch.optim.AdamW(groups, betas=betas, eps=eps)
    if name == "bertadam":
        return BertAdam(groups, betas=betas, eps=eps, max_grad_norm=max_grad_norm or 0.0)
    raise VidretError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def lr_factor(step: int, total_steps: int, schedule: str, warmup: float, warmup_start: float) -> float:
    """The learning rate at ``step`` (0: the first) of ``total_steps``, as a fraction of the base rate.

    ``warmup`` is the warm-up's share of all steps; ``warmup_start`` the factor at step 0.
    """
    if schedule == "linear_then_cosine":
        return linear_then_cosine(step, total_steps, warmup, warmup_start)
    if schedule == "warmup_cosine":
        if warmup_start != 0:
            raise VidretError(f"the warmup_cosine schedule warms up from 0; got a warm-up start of {warmup_start}")
        return warmup_cosine(step / total_steps, warmup)
    raise VidretError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


def linear_then_cosine(step: int, total_steps: int, warmup: float, warmup_start: float) -> float:
    """MMAction2's CLIP4Clip: mmengine's LinearLR from ``warmup_start``, then CosineAnnealingLR to 0."""
    # mmengine turns the boundary into steps with int(); the epsilon keeps e.g. 0.29 x 100 at 29.
    warmup_steps = math.floor(warmup * total_steps + 1e-9)
    if step < warmup_steps:
        # LinearLR runs over end - begin - 1 steps: the factor is 1 at the warm-up's last step.
        return warmup_start + (1 - warmup_start) * step / max(1, warmup_steps - 1)
    return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))


def warmup_cosine(progress: float, warmup: float) -> float:
    """CLIP4Clip's BertAdam ``warmup_cosine``, of the fraction of steps done; the cosine spans the whole run,
    so it is 0.5 (1 + cos(warmup pi)), not 1, where the warm-up ends."""
    if progress < warmup:
        return progress / warmup
    return 0.5 * (1 + math.cos(math.pi * progress))


def decay_table(model: nn.Module, rule: str) -> dict[str, bool]:
    """Whether each trainable parameter, by its name in ``model``, is weight-decayed under ``rule``."""
    if rule == "mmengine":
        decayed = mmengine_decay(model)
    elif rule == "clip4clip":
        decayed = {name: not any(part in name for part in CLIP4CLIP_NO_DECAY) for name, _ in model.named_parameters()}
    else:
        raise VidretError(f"unknown no-decay rule {rule!r}; choose one of {', '.join(NO_DECAY_RULES)}")
    return {name: decayed[name] for name, parameter in model.named_parameters() if parameter.requires_grad}


def mmengine_decay(model: nn.Module) -> dict[str, bool]:
    """mmengine's ``norm_decay_mult=0, bias_decay_mult=0``: no decay for a normalisation layer's parameters
    nor for a parameter named exactly ``bias`` (so ``in_proj_bias`` is decayed)."""
    decayed = {}
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, MMENGINE_NORM_TYPES)
        for name, _ in module.named_parameters(recurse=False):
            decayed[f"{module_name}.{name}" if module_name else name] = not (is_norm or name == "bias")
    return decayed


def parameter_groups(
    model: nn.Module, lr: float, clip_lr: float | None, weight_decay: float, no_decay: str
) -> list[dict]:
    """CLIP4Clip's four groups of the trainable parameters: (decayed | not) x (CLIP | the head), in that order.

    CLIP's parameters are those under ``model.clip``; they get ``clip_lr`` (None: ``lr``). Each group is
    named ("clip/decay", ...) and kept even when empty, so the groups are the same for every head.
    """
    decayed = decay_table(model, no_decay)
    parameters = dict(model.named_parameters())
    clip_lr = lr if clip_lr is None else clip_lr
    return [
        {
            "name": f"{'clip' if in_clip else 'head'}/{'decay' if decay else 'no_decay'}",
            "params": [
                parameters[name]
                for name, is_decayed in decayed.items()
                if is_decayed == decay and name.startswith("clip.") == in_clip
            ],
            "lr": clip_lr if in_clip else lr,
            "weight_decay": weight_decay if decay else 0.0,
        }
        for decay in (True, False)
        for in_clip in (True, False)
    ]


def block_number(name: str) -> int | None:
    """The residual block a CLIP parameter belongs to, in either tower; None outside the blocks."""
    for prefix in BLOCK_PREFIXES:
        if name.startswith(prefix):
            return int(name[len(prefix) :].split(".")[0])
    return None


def stays_trainable(name: str, num_layers: int) -> bool:
    if name.startswith(ALWAYS_TRAINED):
        return True
    block = block_number(name)
    return block is not None and block >= num_layers


def freeze_clip_layers(model: nn.Module, num_layers: int | None) -> list[str]:
    """Freeze CLIP's embeddings and the blocks below ``num_layers`` in both towers (CLIP4Clip's
    ``freeze_layer_num``, MMAction2's ``frozen_layers``); -1 or None freezes nothing.

    Returns the frozen parameters' names in ``model``. The rule is written for OpenAI CLIP's names, which
    only open_clip's ``CLIP`` class shares, so other models, and names it would freeze unexpectedly, are refused.
    """
    if num_layers is None or num_layers == -1:
        return []
    if not isinstance(model.clip, open_clip.model.CLIP):
        raise VidretError(
            f"freezing CLIP layers needs open_clip's CLIP class (OpenAI CLIP's names); this model's is "
            f"{type(model.clip).__name__} (--freeze-layers -1 trains everything)"
        )
    parameters = dict(model.clip.named_parameters())
    # The 3d patch is a new layer, trained as CLIP4Clip trains its conv2.
    new_layers = {"visual.conv1.weight"} if model.spec.linear_patch == "3d" else set()
    frozen = [name for name in parameters if not stays_trainable(name, num_layers) and name not in new_layers]
    unexpected = [name for name in frozen if name not in FROZEN_STEM and block_number(name) is None]
    if unexpected:
        raise VidretError(
            f"freezing CLIP layers would also freeze {', '.join(unexpected)}, which the references' rule was not"
            " written for (--freeze-layers -1 trains everything)"
        )
    depth = 1 + max(block_number(name) for name in parameters if block_number(name) is not None)
    if not 0 <= num_layers <= depth:
        raise VidretError(f"cannot freeze {num_layers} CLIP layers: -1 (none) to {depth}, the deepest tower's blocks")
    for name in frozen:
        parameters[name].requires_grad_(False)
    return [f"clip.{name}" for name in frozen]
