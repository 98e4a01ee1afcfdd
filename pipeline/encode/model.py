"""CLIP4Clip on open_clip: a CLIP image tower applied per frame, a temporal head, a CLIP text tower.

One factory, ``create_clip4clip``, builds the model from an open_clip model name, a
``--pretrained`` source (an open_clip tag, a local file, or ``none``), a head name, a
caption length (CLIP4Clip's ``max_words``; ``CLIP4Clip.tokenize`` cuts captions to it),
the towers' precision and the frame pooling. Weights trained with QuickGELU (OpenAI's)
get QuickGELU towers whatever the model name says. The project's tiny configs
(``model_configs/*.json``) are registered with open_clip's own registry, so
``vidret-tiny`` is a model name like ``ViT-B-32``.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIPTextCfg
from torch import nn

from pipeline import defaults
from pipeline.errors import VidretError, first_line

open_clip.add_model_config(Path(__file__).with_name("model_configs"))

HEADS = ("meanP", "seqLSTM", "seqTransf", "tightTransf")
# Heads that score a (caption, video) pair jointly instead of embedding each: they give no video embedding,
# and rank by re-scoring a dual encoder's candidates (``vidret index --rerank``).
PAIR_HEADS = ("tightTransf",)
# CLIP4Clip's --linear_patch: 2d embeds each frame's patches alone; 3d embeds a patch across the frame and
# its neighbours (a kernel 3 frames deep), started as the 2d patch on the centre frame.
LINEAR_PATCHES = ("2d", "3d")
TEMPORAL_PATCH_FRAMES = 3
SEQ_TRANSFORMER_LAYERS = 4  # CLIP4Clip's seqTransf copies the first 4 layers of the text transformer
# CLIP4Clip's seqTransf blocks use its TF-style LayerNorm (epsilon 1e-12), not CLIP's 1e-5.
SEQ_TRANSFORMER_NORM_EPS = 1e-12
# tightTransf's cross transformer, CLIP4Clip's "cross-base": 4 layers, 64-wide attention heads, MLP 4x the
# width, weights drawn from N(0, 0.02) as BERT's are.
CROSS_LAYERS = 4
CROSS_HEAD_WIDTH = 64
CROSS_INIT_STD = 0.02
# (caption, video) pairs a cross transformer scores in one pass: bounds its activations' memory.
PAIRS_PER_PASS = 4096
# fp32; amp: bf16 autocast on CUDA (full precision on the CPU); fp16: OpenAI's CLIP in half precision
# (convert_weights: linear, convolution and attention weights in fp16, norms and embeddings in fp32).
PRECISIONS = ("fp32", "amp", "fp16")
# Frames the sampling padded (CLIP4Clip's videos shorter than T seconds) are masked with this
# attention bias, as CLIP4Clip's seqTransf does.
MASKED_ATTENTION = -1e6

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the model's architecture and read its inputs; stored in every checkpoint."""

    model: str = defaults.MODEL
    head: str = defaults.HEAD
    pretrained: str = defaults.PRETRAINED  # where the CLIP weights came from: a tag, a file, or none
    caption_length: int | None = None  # tokens per caption, SOT and EOT included; None: the full context length
    force_quick_gelu: bool = False  # QuickGELU towers although the model's config says GELU
    precision: str = "amp"  # one of PRECISIONS
    normalize_frames: bool = True  # L2-normalise frame features before the mean (CLIP4Clip); False: MMAction2
    linear_patch: str = defaults.LINEAR_PATCH  # one of LINEAR_PATCHES

    def to_dict(self) -> dict:
        return asdict(self)


class TemporalPatchEmbedding(nn.Module):
    """The 3d linear patch: the image tower's patch convolution made 3 frames deep, over each video's frames.

    It replaces the tower's ``conv1`` and takes the video (``B×T×3×H×W``) instead of images, giving each
    frame's patch features (``(B·T)×C×h×w``) as ``conv1`` did, so the tower's other layers are untouched.
    Frames outside the video are zeros (CLIP4Clip's padding). Made from the 2d weights on the centre frame
    and zeros on its neighbours, it gives the 2d features at initialisation, and draws no random numbers,
    so the rest of the model initialises as it would with the 2d patch.
    """

    def __init__(self, patch: nn.Conv2d):
        super().__init__()
        self.weight = nn.Parameter(deepened_patch_weight(patch.weight.detach()))
        self.bias = None if patch.bias is None else nn.Parameter(patch.bias.detach().clone())
        self.stride = (1, *patch.stride)
        self.padding = (TEMPORAL_PATCH_FRAMES // 2, *patch.padding)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        patches = F.conv3d(video.transpose(1, 2), self.weight, self.bias, self.stride, self.padding)  # B×C×T×h×w
        return patches.transpose(1, 2).flatten(0, 1)


def deepened_patch_weight(weight: torch.Tensor) -> torch.Tensor:
    """A 2d patch convolution's weight (out × in × h × w) made 3 frames deep: itself on the centre frame,
    zeros on its neighbours."""
    deep = weight.new_zeros(weight.shape[0], weight.shape[1], TEMPORAL_PATCH_FRAMES, *weight.shape[2:])
    deep[:, :, TEMPORAL_PATCH_FRAMES // 2] = weight
    return deep


class MeanPooling(nn.Module):
    """meanP: parameter-free; the pooling in ``CLIP4Clip.encode_video`` is the whole head."""

    def forward(self, frame_features: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        return frame_features


class SequenceLSTM(nn.Module):
    """seqLSTM: an LSTM over the frame features, plus a residual.

    With a frame mask, the LSTM runs over each video's real frames only (packed, as CLIP4Clip);
    the padded positions keep their input features, which the pooling then masks out.
    """

    def __init__(self, width: int):
        super().__init__()
        self.lstm = nn.LSTM(width, width, batch_first=True)

    def forward(self, frame_features: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        if frame_mask is None:
            return self.lstm(frame_features)[0] + frame_features
        lengths = frame_mask.sum(dim=1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(frame_features, lengths, batch_first=True, enforce_sorted=False)
        output, _ = nn.utils.rnn.pad_packed_sequence(
            self.lstm(packed)[0], batch_first=True, total_length=frame_features.shape[1]
        )
        return output + frame_features


class SequenceTransformer(nn.Module):
    """seqTransf: frame position embeddings and the first text-transformer layers, plus a residual.

    As in CLIP4Clip, the position embeddings start as the text tower's token position
    embeddings and the blocks as copies of its first layers (in fp32, with CLIP4Clip's
    LayerNorm epsilon); no causal mask is applied, and padded frames are masked as keys.
    """

    def __init__(self, position_embedding: torch.Tensor, blocks: list[nn.Module]):
        super().__init__()
        self.frame_position_embeddings = nn.Embedding.from_pretrained(
            position_embedding.detach().float().clone(), freeze=False
        )
        self.blocks = nn.ModuleList(copy.deepcopy(block).float() for block in blocks)
        for module in self.blocks.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = SEQ_TRANSFORMER_NORM_EPS

    def forward(self, frame_features: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        num_frames = frame_features.shape[1]
        if num_frames > self.frame_position_embeddings.num_embeddings:
            raise VidretError(
                f"seqTransf has position embeddings for {self.frame_position_embeddings.num_embeddings} frames; "
                f"got {num_frames}"
            )
        positions = torch.arange(num_frames, device=frame_features.device)
        hidden = frame_features + self.frame_position_embeddings(positions).to(frame_features.dtype)
        attention_bias = None
        if frame_mask is not None:
            heads = self.blocks[0].attn.num_heads
            bias = (~frame_mask).to(hidden.dtype) * MASKED_ATTENTION  # B x T, over the keys
            attention_bias = bias[:, None, :].expand(-1, num_frames, -1).repeat_interleave(heads, dim=0)
        for block in self.blocks:
            hidden = block(hidden, attn_mask=attention_bias)
        return hidden + frame_features


class CrossTransformer(nn.Module):
    """tightTransf: a transformer over a caption's token features and a video's frame features together,
    read out as one score for the pair.

    The caption's tokens (SOT to EOT, each projected into the embedding space as CLIP projects its EOT
    feature) and the frames (projected CLS features) enter as one sequence, told apart by a learnt
    modality embedding; frames also get a frame position embedding (the tokens carry the text tower's
    positions already). Padding tokens and padded frames are masked as keys. The score is read from the
    SOT position, which under CLIP's causal mask holds the same feature for every caption, so that it
    serves as the sequence's summary token: a pooler (linear and tanh, as BERT's) and a linear layer.
    """

    def __init__(self, width: int, max_frames: int):
        super().__init__()
        self.max_frames = max_frames
        self.modality_embeddings = nn.Embedding(2, width)  # 0: caption tokens, 1: frames
        self.frame_position_embeddings = nn.Embedding(max_frames, width)
        layer = nn.TransformerEncoderLayer(
            width, max(1, width // CROSS_HEAD_WIDTH), 4 * width, dropout=0.0, activation="gelu",
            batch_first=True, norm_first=True,
        )  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, CROSS_LAYERS, norm=nn.LayerNorm(width), enable_nested_tensor=False)
        self.pooler = nn.Linear(width, width)
        self.score = nn.Linear(width, 1)
        # TransformerEncoder copies one layer: drawn afresh, its layers start apart.
        for name, parameter in self.named_parameters():
            if parameter.dim() > 1:
                nn.init.normal_(parameter, std=CROSS_INIT_STD)
            elif name.endswith("bias"):
                nn.init.zeros_(parameter)

    def forward(
        self, text: torch.Tensor, text_mask: torch.Tensor, frames: torch.Tensor, frame_mask: torch.Tensor
    ) -> torch.Tensor:
        """One score per row: ``text`` P×L×D with ``text_mask`` P×L (True for real tokens), ``frames`` P×T×D
        with ``frame_mask`` P×T (True for real frames)."""
        num_frames = frames.shape[1]
        if num_frames > self.max_frames:
            raise VidretError(f"tightTransf has position embeddings for {self.max_frames} frames; got {num_frames}")
        text = text + self.modality_embeddings.weight[0]
        frames = frames + self.modality_embeddings.weight[1] + self.frame_position_embeddings.weight[:num_frames]
        hidden = self.encoder(
            torch.cat([text, frames], dim=1), src_key_padding_mask=~torch.cat([text_mask, frame_mask], dim=1)
        )
        return self.score(torch.tanh(self.pooler(hidden[:, 0]))).squeeze(-1)


@dataclass
class PairFeatures:
    """What a pair head scores: the captions' token features and the videos' frame features, with masks."""

    text: torch.Tensor  # Nt×L×D float32
    text_mask: torch.Tensor  # Nt×L bool: SOT to EOT
    frames: torch.Tensor  # Nv×T×D float32
    frame_mask: torch.Tensor  # Nv×T bool: sampled frames

    def trimmed(self) -> PairFeatures:
        """Token positions past every caption's EOT left out: masked anyway, they would only cost time."""
        length = int(self.text_mask.sum(dim=1).max())
        return PairFeatures(self.text[:, :length], self.text_mask[:, :length], self.frames, self.frame_mask)


def every_real_frame(frame_mask: torch.Tensor | None, frame_features: torch.Tensor) -> torch.Tensor:
    """A batch's frame mask on its features' device; all True where the batch has none (no padded frame)."""
    if frame_mask is None:
        return torch.ones(frame_features.shape[:2], dtype=torch.bool, device=frame_features.device)
    return frame_mask.to(frame_features.device)


def score_pair_rows(
    head: nn.Module, features: PairFeatures, captions: torch.Tensor, videos: torch.Tensor,
    on_pass: Callable[[int], object] = lambda pairs: None,
) -> torch.Tensor:  # fmt: skip
    """``head``'s score of each pair (``captions[i]``, ``videos[i]``), rows of ``features``, in passes of at
    most ``PAIRS_PER_PASS`` pairs (``on_pass`` is called with each pass's number of pairs)."""
    features = features.trimmed()
    scores = []
    for start in range(0, len(captions), PAIRS_PER_PASS):
        text_rows, video_rows = captions[start : start + PAIRS_PER_PASS], videos[start : start + PAIRS_PER_PASS]
        scores.append(
            head(
                features.text[text_rows],
                features.text_mask[text_rows],
                features.frames[video_rows],
                features.frame_mask[video_rows],
            )  # fmt: skip
        )
        on_pass(len(text_rows))
    return torch.cat(scores) if scores else features.text.new_zeros(0)


def score_matrix(head: nn.Module, features: PairFeatures) -> torch.Tensor:
    """Every caption against every video: the Nt×Nv matrix of ``head``'s pair scores."""
    num_texts, num_videos = len(features.text), len(features.frames)
    device = features.text.device
    captions = torch.arange(num_texts, device=device).repeat_interleave(num_videos)
    videos = torch.arange(num_videos, device=device).repeat(num_texts)
    return score_pair_rows(head, features, captions, videos).view(num_texts, num_videos)


class CLIP4Clip(nn.Module):
    """Video and text towers with a shared embedding space.

    Frames arrive as uint8 ``B×T×H×W×3`` and are normalised here, on the model's device,
    with the CLIP model's own mean and std. A frame mask (``B×T``, True for real frames)
    leaves out the frames a sampling padded; without one, every frame is real.
    """

    def __init__(self, clip: nn.Module, head: nn.Module, spec: ModelSpec, mean, std, image_size: tuple[int, int]):
        super().__init__()
        self.clip = clip
        self.head = head
        self.spec = spec
        self.image_size = image_size
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)
        self._tokenizer = None  # open_clip's, made on first use; a plain attribute, not in the state dict

    @property
    def context_length(self) -> int:
        """The text tower's full context length (77 for ViT-B-32)."""
        return self.clip.context_length

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        """Token ids, ``N×context_length``: each caption cut to ``spec.caption_length`` tokens (EOT kept last)."""
        if self._tokenizer is None:
            self._tokenizer = open_clip.get_tokenizer(self.spec.model)
        tokens = self._tokenizer(list(captions), context_length=self.spec.caption_length)
        # open_clip's encode_text adds the positional embedding of every position, so it needs full-length
        # input; under the causal mask the EOT feature never sees the zeros after it, so padding the cut
        # captions gives the features of CLIP4Clip's truncation.
        return F.pad(tokens, (0, self.context_length - tokens.shape[1]))

    @property
    def tower_dtype(self) -> torch.dtype:
        """What the image tower takes: fp16 for OpenAI's half-precision towers, else float32."""
        return torch.float16 if self.spec.precision == "fp16" else torch.float32

    def autocast(self):
        """bf16 autocast for ``amp`` on CUDA; otherwise none: on the CPU bf16 is slow and tests compare
        exactly, and ``fp16`` and ``fp32`` towers compute in their own weights' precision."""
        if self.pixel_mean.device.type == "cuda" and self.spec.precision == "amp":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def normalize_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``B×T×H×W×3`` → float ``(B·T)×3×H×W``, normalised as open_clip's preprocessing does."""
        pixels = frames.to(self.pixel_mean.device, non_blocking=True).flatten(0, 1).permute(0, 3, 1, 2).float()
        return (pixels - self.pixel_mean) / self.pixel_std

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Projected CLS features per frame, ``B×T×D`` float32 (not normalised)."""
        batch, num_frames = frames.shape[:2]
        pixels = self.normalize_frames(frames).to(self.tower_dtype)
        if self.spec.linear_patch == "3d":  # the tower's first layer takes whole videos
            pixels = pixels.view(batch, num_frames, *pixels.shape[1:])
        features = self.clip.encode_image(pixels)
        return features.float().view(batch, num_frames, -1)

    def encode_video(self, frames: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The head, then the mean over the real frames, L2-normalised. CLIP4Clip L2-normalises each
        frame before the mean, MMAction2's mean adapter does not (``spec.normalize_frames``)."""
        if frame_mask is not None:
            frame_mask = frame_mask.to(self.pixel_mean.device, non_blocking=True)
        frame_features = self.head(self.encode_frames(frames), frame_mask)
        if self.spec.normalize_frames:
            frame_features = F.normalize(frame_features, dim=-1)
        if frame_mask is None:
            pooled = frame_features.mean(dim=1)
        else:
            weights = frame_mask.unsqueeze(-1).to(frame_features.dtype)
            pooled = (frame_features * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
        return F.normalize(pooled, dim=-1)

    @property
    def scores_pairs(self) -> bool:
        """Whether the head scores (caption, video) pairs (tightTransf) rather than pooling a video embedding."""
        return self.spec.head in PAIR_HEADS

    def encode_text_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every token's feature, ``N×L×D`` float32, projected as CLIP projects the EOT one (the EOT row is
        ``encode_text``'s feature before its normalisation); and the mask of the real tokens, SOT to EOT."""
        tokens = tokens.to(self.pixel_mean.device, non_blocking=True)
        clip = self.clip
        cast_dtype = clip.transformer.get_cast_dtype()
        hidden = clip.token_embedding(tokens).to(cast_dtype) + clip.positional_embedding.to(cast_dtype)
        hidden = clip.ln_final(clip.transformer(hidden, attn_mask=clip.attn_mask))
        projection = clip.text_projection
        features = projection(hidden) if isinstance(projection, nn.Linear) else hidden @ projection
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return features.float(), positions <= tokens.argmax(dim=-1, keepdim=True)  # CLIP's EOT: the largest id

    def pair_features(
        self, frames: torch.Tensor, tokens: torch.Tensor, frame_mask: torch.Tensor | None = None
    ) -> PairFeatures:
        """What a pair head scores, from uint8 frames and token ids."""
        frame_features = self.encode_frames(frames)
        text, text_mask = self.encode_text_tokens(tokens)
        return PairFeatures(text, text_mask, frame_features, every_real_frame(frame_mask, frame_features))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """The text tower's EOT feature, L2-normalised, float32."""
        features = self.clip.encode_text(tokens.to(self.pixel_mean.device, non_blocking=True))
        return F.normalize(features.float(), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        # Not clamped here: a clamp in the forward pass would stop the scale's gradient at the bound
        # (exp(log 100) is just over 100 in float32); the references clamp the parameter after a step.
        return self.clip.logit_scale.exp()

    @torch.no_grad()
    def clamp_logit_scale(self, max_scale: float | None) -> None:
        """Keep the learnable temperature at most ``max_scale`` (None: unbounded), as CLIP4Clip does
        after each step."""
        if max_scale is not None:
            self.clip.logit_scale.clamp_(max=math.log(max_scale))

    def forward(self, frames: torch.Tensor, tokens: torch.Tensor, frame_mask: torch.Tensor | None = None):
        """A dual encoder's (video embeddings, text embeddings, logit scale); a pair head's ``PairFeatures``."""
        if self.scores_pairs:
            return self.pair_features(frames, tokens, frame_mask)
        # Returning the scale from forward lets DDP see every parameter used in the step.
        return self.encode_video(frames, frame_mask), self.encode_text(tokens), self.logit_scale()


def check_model_choice(
    name: str, pretrained: str, head: str, caption_length: int | None = None, precision: str = "amp",
    linear_patch: str = ModelSpec.linear_patch,
) -> None:  # fmt: skip
    """Fail fast, before any data is read or weights fetched, on a model, tag, head, caption length,
    precision or linear patch that cannot work."""
    if name not in open_clip.list_models():
        close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else " See open_clip.list_models()."
        raise VidretError(f"unknown model {name!r}.{hint}")
    if head not in HEADS:
        raise VidretError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained != "none" and not Path(pretrained).is_file() and pretrained not in tags:
        raise VidretError(
            f"--pretrained {pretrained!r} is neither a file nor an open_clip tag for {name} "
            f"(tags: {', '.join(tags) or 'none'}; or 'none')"
        )
    check_caption_length(name, caption_length)
    check_precision(precision)
    check_linear_patch(name, linear_patch)


def check_linear_patch(name: str, linear_patch: str) -> None:
    """``2d``, or ``3d`` on a ViT tower (the only kind with a patch convolution to deepen)."""
    if linear_patch not in LINEAR_PATCHES:
        raise VidretError(f"--linear-patch {linear_patch!r}: choose one of {', '.join(LINEAR_PATCHES)}")
    vision = (open_clip.get_model_config(name) or {}).get("vision_cfg", {})
    if linear_patch == "3d" and (isinstance(vision.get("layers"), (list, tuple)) or "timm_model_name" in vision):
        raise VidretError(
            f"--linear-patch 3d deepens a ViT's patch embedding; {name}'s image tower has none (use --linear-patch 2d)"
        )


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise VidretError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")


def config_context_length(name: str) -> int:
    """The text context length ``name``'s open_clip config gives (open_clip's default where it names none)."""
    text_config = (open_clip.get_model_config(name) or {}).get("text_cfg", {})
    return text_config.get("context_length", CLIPTextCfg.context_length)


def check_caption_length(name: str, caption_length: int | None) -> None:
    """None (the full context) or 2 (SOT and EOT) up to the model's context length."""
    if caption_length is None:
        return
    limit = config_context_length(name)
    if isinstance(caption_length, bool) or not isinstance(caption_length, int) or not 2 <= caption_length <= limit:
        raise VidretError(
            f"--caption-length {caption_length!r}: {name} takes 2 to {limit} tokens per caption (SOT and EOT included)"
        )


def quick_gelu_needed(name: str, pretrained: str) -> bool:
    """Whether QuickGELU must be forced: ``pretrained`` is an open_clip tag whose weights were trained with
    QuickGELU (OpenAI's, say) and ``name``'s config says GELU. Read from open_clip's pretrained config, so
    nothing is downloaded."""
    if (open_clip.get_model_config(name) or {}).get("quick_gelu", False):
        return False
    return bool(open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu", False))


def warn_of_activation(name: str, pretrained: str, force_quick_gelu: bool) -> None:
    """Say in one line when vidret builds other activations than the model name says, or cannot tell."""
    if force_quick_gelu:
        logger.warning(
            "vidret: %s's %r weights were trained with QuickGELU; building %s with QuickGELU (as %s-quickgelu)",
            name, pretrained, name, name,
        )  # fmt: skip
    elif Path(pretrained).is_file() and f"{name}-quickgelu" in open_clip.list_models():
        logger.warning(
            "vidret: %s uses GELU; if %s holds weights trained with QuickGELU (OpenAI's, for one), "
            "use --model %s-quickgelu",
            name, pretrained, name,
        )  # fmt: skip


def create_clip(name: str, pretrained: str, precision: str = "amp", force_quick_gelu: bool = False) -> nn.Module:
    """An open_clip model with weights from a tag, a local file, or ``none`` (random init); ``fp16`` rounds
    its weights to half precision as OpenAI's ``convert_weights`` does (norms and embeddings stay fp32)."""
    settings = {"precision": "fp16" if precision == "fp16" else "fp32", "force_quick_gelu": force_quick_gelu}
    if pretrained == "none":
        return open_clip.create_model(name, pretrained=None, **settings)
    if Path(pretrained).is_file():
        try:
            return open_clip.create_model(name, pretrained=pretrained, **settings)
        except Exception as error:  # open_clip fails in many ways on a foreign file (assertions, unpickling, keys)
            reason = f"{type(error).__name__}: {first_line(error)}"
            raise VidretError(f"--pretrained {pretrained}: not open_clip weights for {name} ({reason})") from None
    try:
        return open_clip.create_model(name, pretrained=pretrained, **settings)
    except Exception as error:  # downloads fail in many ways (DNS, HTTP, proxy, hub offline)
        raise VidretError(
            f"could not fetch the {pretrained!r} weights for {name} ({first_line(error)}); "
            f"download them where there is a network and pass the file: --pretrained /path/to/weights.bin"
        ) from None


def text_transformer_parts(clip: nn.Module) -> tuple[torch.Tensor, list[nn.Module], int]:
    """(token position embeddings, residual blocks, width) of a CLIP text tower."""
    text = getattr(clip, "text", clip)  # open_clip's CustomTextCLIP keeps the text tower under .text
    transformer = getattr(text, "transformer", None)
    blocks = getattr(transformer, "resblocks", None)
    if blocks is None or not hasattr(text, "positional_embedding"):
        raise VidretError("seqTransf needs a CLIP-style text transformer (resblocks); this model's text tower has none")
    if not getattr(transformer, "batch_first", True):
        raise VidretError("seqTransf needs an open_clip text transformer with batch_first=True")
    return text.positional_embedding, list(blocks), transformer.width


def check_token_features(clip: nn.Module) -> None:
    """tightTransf reads every token of the text tower: open_clip's CLIP class, pooled at the EOT (argmax)."""
    if not isinstance(clip, open_clip.model.CLIP) or getattr(clip, "text_pool_type", None) != "argmax":
        raise VidretError(
            "tightTransf reads every caption token from open_clip's own text transformer (the CLIP class, pooled"
            f" at EOT); this model's is {type(clip).__name__} (use meanP, seqLSTM or seqTransf)"
        )


def create_head(name: str, clip: nn.Module, embed_dim: int) -> nn.Module:
    if name == "tightTransf":
        check_token_features(clip)
        # As many frame positions as seqTransf has (the text tower's context length).
        return CrossTransformer(embed_dim, clip.positional_embedding.shape[0])
    if name == "meanP":
        return MeanPooling()
    if name == "seqLSTM":
        return SequenceLSTM(embed_dim)
    if name == "seqTransf":
        position_embedding, blocks, width = text_transformer_parts(clip)
        if width != embed_dim:
            raise VidretError(
                f"seqTransf reuses the text transformer (width {width}) on frame features of width {embed_dim}; "
                "this model's widths differ, use meanP or seqLSTM"
            )
        if len(blocks) < SEQ_TRANSFORMER_LAYERS:
            raise VidretError(f"seqTransf needs {SEQ_TRANSFORMER_LAYERS} text layers; the model has {len(blocks)}")
        return SequenceTransformer(position_embedding, blocks[:SEQ_TRANSFORMER_LAYERS])
    raise AssertionError(f"unknown head {name!r}")  # check_model_choice rejects it first


def create_clip4clip(
    model: str = ModelSpec.model,
    pretrained: str = ModelSpec.pretrained,
    head: str = ModelSpec.head,
    caption_length: int | None = ModelSpec.caption_length,
    *,
    precision: str = ModelSpec.precision,
    normalize_frames: bool = ModelSpec.normalize_frames,
    linear_patch: str = ModelSpec.linear_patch,
    force_quick_gelu: bool | None = None,
) -> CLIP4Clip:
    """Build CLIP4Clip: open_clip towers (``pretrained``: tag, file or none) in ``precision``, a temporal
    head, captions cut to ``caption_length`` tokens (None: the text tower's full context length), the
    frame pooling (``normalize_frames``) and the image tower's ``linear_patch``. ``force_quick_gelu`` None
    decides from the tag's pretrained config (and says so); a checkpoint passes what it was built with."""
    check_model_choice(model, pretrained, head, caption_length, precision, linear_patch)
    if force_quick_gelu is None:
        force_quick_gelu = quick_gelu_needed(model, pretrained)
        warn_of_activation(model, pretrained, force_quick_gelu)
    clip = create_clip(model, pretrained, precision, force_quick_gelu)
    if caption_length is not None and not cuts_captions_exactly(clip):
        raise VidretError(
            f"--caption-length needs a causal text tower pooled at the EOT token, as CLIP's; {model}'s is not"
            " (leave --caption-length out)"
        )
    if linear_patch == "3d":  # check_linear_patch has made sure the tower is a ViT, whose conv1 is the patch
        clip.visual.conv1 = TemporalPatchEmbedding(clip.visual.conv1)
    if head in PAIR_HEADS:  # a pair head's score has no temperature: left as it is, the scale gets no gradient
        clip.logit_scale.requires_grad_(False)
    preprocess = open_clip.get_model_preprocess_cfg(clip)
    embed_dim = clip.visual.output_dim
    spec = ModelSpec(
        model=model, head=head, pretrained=pretrained, caption_length=caption_length,
        force_quick_gelu=force_quick_gelu, precision=precision, normalize_frames=normalize_frames,
        linear_patch=linear_patch,
    )  # fmt: skip
    image_size = (
        tuple(preprocess["size"]) if isinstance(preprocess["size"], (list, tuple)) else (preprocess["size"],) * 2
    )
    return CLIP4Clip(clip, create_head(head, clip, embed_dim), spec, preprocess["mean"], preprocess["std"], image_size)


def cuts_captions_exactly(clip: nn.Module) -> bool:
    """Whether zeros after EOT leave the text feature alone: a causal mask and pooling at EOT (argmax or eos)."""
    text = getattr(clip, "text", clip)  # open_clip's CustomTextCLIP keeps the text tower under .text
    pool_type = getattr(text, "text_pool_type", getattr(text, "pool_type", None))
    return getattr(text, "attn_mask", None) is not None and pool_type in ("argmax", "eos")
