"""Typed, frozen views of `params.yaml`, one dataclass per section: the one source of every default.

The defaults here equal the shipped `params.yaml` (``tests/test_config.py`` compares them), so a key left
out of a user's params file means what the shipped file says, and no module re-supplies a default of its
own: later stages read the settings an earlier stage used from what it saved (:mod:`crosstune.transfer_model.settings`).

Why: a typo in `params.yaml` should fail before any work starts, naming the key and the valid
choices, instead of silently falling back to a default halfway through a 5-minute stage.
Every section loads through :func:`load_section`, which rejects unknown keys, checks types and
coerces YAML 1.1 quirks (``5e-5`` is a string to PyYAML) before ``__post_init__`` checks values.

A leaf: it imports no other crosstune module but the errors. Names that pick a registry entry (a task, an
optimizer, a head, a score, a baseline) are checked where the entry is looked up, and all at once by
`crosstune check` (:mod:`crosstune.checks`), so loading a section never imports the code behind the names.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union

import yaml

from crosstune.errors import ConfigError

T = TypeVar("T")

DEFAULT_PARAMS_PATH = "params.yaml"

# prepare.separator's names (besides auto) for the characters; a literal tab ("\t" in YAML) means tab too
TABLE_SEPARATORS = {",": ",", ";": ";", "tab": "\t", "|": "|"}


def _fail(key: str, message: str) -> typing.NoReturn:
    error = ConfigError(f"params.yaml: {key}: {message}")
    error.key = key  # lets `crosstune check` set the key aside and go on to find the section's next problem
    raise error


def _check_choice(key: str, value: str, choices: typing.Iterable[str]) -> None:
    allowed = sorted(choices)
    if value not in allowed:
        _fail(key, f"{value!r} is not one of {allowed}; set one of those.")



def _check_range(key: str, value: float, low: float | None = None, high: float | None = None,
                 low_inclusive: bool = True, high_inclusive: bool = True) -> None:
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    if too_low or too_high:
        left = "[" if low_inclusive else "("
        right = "]" if high_inclusive else ")"
        _fail(key, f"{value!r} is outside {left}{low}, {high}{right}.")


@dataclass(frozen=True)
class BaseParams:
    """Settings shared by every stage."""

    section: ClassVar[str] = "base"

    seed: int = 42  # one seed fixes splits, head init, shuffling and dropout
    device: str = "auto"  # auto picks cuda when present, else cpu
    num_threads: int = 0  # CPU threads for torch; 0 = all cores of this machine
    deterministic: bool = False  # torch.use_deterministic_algorithms: refuse kernels that are not (GPU atomics)

    def __post_init__(self) -> None:
        _check_choice("base.device", self.device, ("auto", "cpu", "cuda"))
        _check_range("base.num_threads", self.num_threads, low=0)


@dataclass(frozen=True)
class PrepareParams:
    """How to read, validate and split the target-domain table."""

    section: ClassVar[str] = "prepare"

    text_column: str = "review"  # the embedded drug reviews' columns; set your table's
    label_column: str = "rating"
    separator: str = "auto"  # CSV/TSV/TXT: auto sniffs , ; tab | from the file's start; or force one of them
    task: str = "classification"  # crosstune.tasks.registry.TASKS: classification | regression | token_classification
    tag_scheme: str = "auto"  # token_classification CoNLL tags: auto (BIOES with E-/S-, else IOB2), iob1, iob2, bioes
    validation_fraction: float = 0.15  # held out of the training file, stratified
    test_fraction: float = 0.2  # held out as the test split when data.test is data.train (no test file)
    min_examples_per_class: int = 5  # fewer makes stratified splits and F1 meaningless
    lowercase: bool = False  # most modern tokenizers handle case themselves
    deduplicate: bool = True  # identical texts leak between splits otherwise
    min_text_chars: int = 1  # texts shorter than this after normalising are an error
    image_column: str = "image"  # for a table of image paths (a directory input is read as ImageFolder)
    min_image_size: int = 8  # images with a side shorter than this many pixels are an error
    audio_column: str = "audio"  # for a table of audio paths (a directory of wav/flac files is read per class)
    min_audio_seconds: float = 0.05  # recordings shorter than this are an error
    # a labelled source domain (data.source in dvc.yaml) to adapt from
    source_label_map: dict[str, str] = field(default_factory=dict)  # source label -> target label or "drop"
    target_labelled: float = 1.0  # fraction of target training examples whose labels are used; 0 = unsupervised
    validation_domain: str = "target"  # target | source: which domain's held-out labels pick the best epoch
    drop_bad_boxes: bool = False  # detection: drop boxes outside the image or of zero area (counted) instead of failing

    def __post_init__(self) -> None:
        separator = "tab" if self.separator == "\t" else self.separator
        _check_choice("prepare.separator", separator, ("auto", *TABLE_SEPARATORS))
        _check_range("prepare.target_labelled", self.target_labelled, 0.0, 1.0)
        _check_choice("prepare.validation_domain", self.validation_domain, ("target", "source"))
        _check_choice("prepare.tag_scheme", self.tag_scheme, ("auto", "iob1", "iob2", "bioes"))
        _check_range("prepare.validation_fraction", self.validation_fraction, 0.0, 0.5, False, False)
        _check_range("prepare.test_fraction", self.test_fraction, 0.0, 0.5, False, False)
        _check_range("prepare.min_examples_per_class", self.min_examples_per_class, low=2)
        _check_range("prepare.min_text_chars", self.min_text_chars, low=1)
        _check_range("prepare.min_image_size", self.min_image_size, low=1)
        _check_range("prepare.min_audio_seconds", self.min_audio_seconds, low=0.0)
        if self.text_column == self.label_column:
            _fail("prepare.label_column", "must differ from prepare.text_column.")


@dataclass(frozen=True)
class TinyBertParams:
    """Shape of the random BERT used by tests (`backbone.name: tiny-bert`)."""

    section: ClassVar[str] = "backbone.tiny"

    num_layers: int = 2
    hidden_size: int = 32
    num_heads: int = 2
    intermediate_size: int = 64
    vocab_size: int = 1000  # WordPiece vocabulary learnt from the training texts

    def __post_init__(self) -> None:
        for key in ("num_layers", "hidden_size", "num_heads", "intermediate_size"):
            _check_range(f"backbone.tiny.{key}", getattr(self, key), low=1)
        _check_range("backbone.tiny.vocab_size", self.vocab_size, low=100)
        if self.hidden_size % self.num_heads:
            _fail("backbone.tiny.hidden_size", "must be divisible by backbone.tiny.num_heads.")


@dataclass(frozen=True)
class BackboneParams:
    """Which pretrained encoder to load and how to tokenize for it."""

    section: ClassVar[str] = "backbone"

    name: str = "minilm-l6"  # a registry name, a local Hugging Face directory, or a hub id
    max_length: int = 256  # text: tokens kept per text when encoding; finetune may cut further
    weights: str = "DEFAULT"  # images: DEFAULT, a torchvision weights name, none, or a .pth/.safetensors file
    image_size: int = 0  # images: input side in pixels; 0 = what the weights were trained at
    clip_seconds: float = 0.0  # audio: every clip cut or zero-padded to this; 0 = the longest training clip
    clip_align: str = "center"  # audio: center keeps the middle of long clips and centres short ones; start
    tiny: TinyBertParams = field(default_factory=TinyBertParams)
    select: str = "name"  # name: use backbone.name; score: the best of backbone.candidates by backbone.score
    candidates: tuple[str, ...] = ()  # names, directories or hub ids; "NAME@K" = the first K blocks of NAME
    score: str = "logme"  # transferability score reported (and, with select: score, used to pick)
    selection_samples: int = 500  # training examples (seeded sample) features are scored on

    def __post_init__(self) -> None:
        if not self.name:
            _fail("backbone.name", "is empty; set a registry name, a local directory or a hub id.")
        _check_choice("backbone.select", self.select, ("name", "score"))
        _check_range("backbone.selection_samples", self.selection_samples, low=10)
        if self.select == "score" and not self.candidates:
            _fail("backbone.candidates", "is empty but backbone.select is 'score'; list the backbones to rank.")
        _check_range("backbone.max_length", self.max_length, low=8)
        _check_range("backbone.image_size", self.image_size, low=0)
        _check_range("backbone.clip_seconds", self.clip_seconds, low=0.0)
        _check_choice("backbone.clip_align", self.clip_align, ("center", "start"))


@dataclass(frozen=True)
class FreezeParams:
    """Which backbone parameters stay at their pretrained values."""

    section: ClassVar[str] = "freeze"

    depth: Union[int, str] = 0  # embeddings + the bottom N blocks; "all" = the whole backbone; "auto" = chosen from
    # the backbone's transferability after each block (crosstune.freezing.auto_depth; metrics/freeze.json says why)
    patterns: tuple[str, ...] = ()  # extra fnmatch patterns on parameter names to freeze
    train_batchnorm: bool = False  # images: keep BatchNorm layers of frozen blocks trainable (and updating)
    lora_r: int = 0  # > 0: backbone (text, a recogniser's encoder) frozen, rank-r LoRA adapters + the head train
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] = ("query", "value")  # module names that get adapters

    def __post_init__(self) -> None:
        _check_range("freeze.lora_r", self.lora_r, low=0)
        _check_range("freeze.lora_alpha", self.lora_alpha, low=0.0, low_inclusive=False)
        _check_range("freeze.lora_dropout", self.lora_dropout, 0.0, 1.0, True, False)
        if self.lora_r and not self.lora_targets:
            _fail("freeze.lora_targets", "give at least one module name (e.g. [query, value]) for the adapters.")
        if isinstance(self.depth, str) and self.depth not in ("all", "auto"):
            _fail("freeze.depth", f"{self.depth!r} is neither a whole number >= 0 nor 'all' or 'auto'.")
        if isinstance(self.depth, int) and self.depth < 0:
            _fail("freeze.depth", f"{self.depth} is negative; use 0 (train everything) or more.")


@dataclass(frozen=True)
class HeadParams:
    """The new task head put on top of the pooled backbone features."""

    section: ClassVar[str] = "head"

    type: str = "linear"  # linear | mlp | hf (the stock Hugging Face classification model, text only)
    pooling: str = "mean"  # mean suits sentence-transformer backbones; cls suits BERT-style ones (and hf)
    dropout: float = 0.1
    hidden_dim: int = 256  # mlp head only
    fpn_channels: int = 128  # detection: width of the feature pyramid and of FCOS's towers (a multiple of 32)

    def __post_init__(self) -> None:
        _check_range("head.dropout", self.dropout, 0.0, 1.0, True, False)
        _check_range("head.hidden_dim", self.hidden_dim, low=1)
        _check_range("head.fpn_channels", self.fpn_channels, low=32)
        if self.fpn_channels % 32:
            _fail("head.fpn_channels", f"{self.fpn_channels} is not a multiple of 32 (FCOS's towers normalise in 32 "
                                       f"groups); use 64, 128 or 256.")


HEAD_INITS = ("auto", "random", "probe")  # finetune.head_init: where fine-tuning's head starts


@dataclass(frozen=True)
class FinetuneParams:
    """Optimisation of the attached model on the target training split."""

    section: ClassVar[str] = "finetune"

    optimizer: str = "adamw"
    lr: float = 1e-4  # the recipe benchmark's best on the embedded default (bench/README.md)
    weight_decay: float = 0.01  # decoupled for adamw, L2 penalty for the others
    momentum: float = 0.9  # sgd and rmsprop only
    epochs: int = 4
    batch_size: int = 16
    max_length: int = 256  # tokens per text at training time (<= backbone.max_length)
    scheduler: str = "linear"
    warmup_ratio: float = 0.1  # fraction of all steps spent warming up
    loss: str = "cross_entropy"  # mse for regression
    class_weights: Union[str, tuple[float, ...]] = "balanced"  # none | balanced | one weight per label
    select_metric: str = "f1_macro"  # validation metric that picks the best epoch
    select_window: int = 3  # odd: epochs (centred) whose mean select_metric ranks an epoch; 1 = its own value
    log_every: int = 5  # optimizer steps between logged training losses
    # where the head starts: random (attach_head's head) | probe (LP-FT: the probe stage's fitted head) | auto (probe
    # when nothing in the backbone trains, where head-only training at the backbone's rate barely moves; else random)
    head_init: str = "auto"
    # transfer-aware rates and schedules
    head_lr: float = 0.0  # learning rate of the new head; 0 = finetune.lr
    layer_decay: float = 1.0  # discriminative rates: block k below the top trains at lr * layer_decay**k
    stlr_ratio: float = 32.0  # slanted_triangular only: how much smaller the lowest rate is than lr
    unfreeze: str = "none"  # none | gradual (ULMFiT: head first, then one more block from the top)
    unfreeze_every: int = 0  # gradual: optimizer steps between unfreezing; 0 = once per epoch
    # regularisers towards the pretrained model, added to the task loss with these weights
    l2sp: float = 0.0  # L2-SP: alpha * ||w - w_pretrained||^2 over the backbone (its weight decay then off)
    bss: float = 0.0  # batch spectral shrinkage: eta * sum of the bss_k smallest squared singular values
    bss_k: int = 1
    label_smoothing: float = 0.0
    # hygiene
    early_stopping_patience: int = 0  # stop after this many epochs without a better select_metric; 0 = off
    max_grad_norm: float = 0.0  # clip the gradient norm; 0 = off
    grad_accumulation: int = 1  # batches per optimizer step
    mixed_precision: str = "auto"  # auto (GPU: bf16/fp16; CPU: float32: reproduces across CPUs) | off | bf16 | fp16
    attention_dropout: Union[float, str] = 0.0  # on attention probabilities; "backbone" = its own (1.4x slower)
    num_processes: int = 1  # > 1: data-parallel processes (torchrun; gloo on CPU, nccl on GPUs); 0 = one per GPU
    checkpoint_every: int = 1  # epochs between resumable checkpoints (checkpoints/finetune)
    # domain adaptation from the labelled source domain (prepare's data.source)
    adaptation: str = "none"  # none | dann | cdan | coral | mmd: loss aligning source and target features
    adaptation_weight: float = 1.0  # weight of that loss beside the task loss

    def __post_init__(self) -> None:
        _check_range("finetune.lr", self.lr, low=0.0, low_inclusive=False)
        _check_range("finetune.weight_decay", self.weight_decay, low=0.0)
        _check_range("finetune.momentum", self.momentum, 0.0, 1.0, True, False)
        _check_range("finetune.epochs", self.epochs, low=1)
        _check_range("finetune.batch_size", self.batch_size, low=1)
        _check_range("finetune.max_length", self.max_length, low=8)
        _check_range("finetune.warmup_ratio", self.warmup_ratio, 0.0, 1.0, True, False)
        _check_range("finetune.log_every", self.log_every, low=1)
        _check_range("finetune.select_window", self.select_window, low=1)
        if self.select_window % 2 == 0:
            _fail("finetune.select_window", f"{self.select_window} is even; the window is centred on an epoch, "
                                            f"so use an odd number of epochs (1 = the epoch's own value, 3, 5).")
        _check_choice("finetune.head_init", self.head_init, HEAD_INITS)
        _check_range("finetune.head_lr", self.head_lr, low=0.0)
        _check_range("finetune.layer_decay", self.layer_decay, 0.0, 1.0, False, True)
        _check_range("finetune.stlr_ratio", self.stlr_ratio, low=1.0)
        _check_choice("finetune.unfreeze", self.unfreeze, ("none", "gradual"))
        _check_range("finetune.unfreeze_every", self.unfreeze_every, low=0)
        _check_range("finetune.l2sp", self.l2sp, low=0.0)
        _check_range("finetune.bss", self.bss, low=0.0)
        _check_range("finetune.bss_k", self.bss_k, low=1)
        _check_range("finetune.label_smoothing", self.label_smoothing, 0.0, 1.0, True, False)
        _check_range("finetune.early_stopping_patience", self.early_stopping_patience, low=0)
        _check_range("finetune.max_grad_norm", self.max_grad_norm, low=0.0)
        _check_range("finetune.grad_accumulation", self.grad_accumulation, low=1)
        _check_choice("finetune.mixed_precision", self.mixed_precision, ("auto", "off", "bf16", "fp16"))
        if isinstance(self.attention_dropout, str):
            _check_choice("finetune.attention_dropout", self.attention_dropout, ("backbone",))
        else:
            _check_range("finetune.attention_dropout", self.attention_dropout, 0.0, 1.0, True, False)
        _check_range("finetune.num_processes", self.num_processes, low=0)
        _check_range("finetune.checkpoint_every", self.checkpoint_every, low=1)
        if self.adaptation != "none":
            if self.num_processes != 1:
                _fail("finetune.num_processes", "domain adaptation trains its discriminator in one process; "
                                                "use num_processes: 1 with finetune.adaptation.")
        _check_range("finetune.adaptation_weight", self.adaptation_weight, low=0.0)
        if self.num_processes != 1 and self.unfreeze != "none":
            _fail("finetune.num_processes", "data-parallel training needs a fixed set of trainable parameters; "
                                            "use finetune.unfreeze: none with num_processes > 1.")
        if isinstance(self.class_weights, str):
            _check_choice("finetune.class_weights", self.class_weights, ("none", "balanced"))
        elif any(weight <= 0 for weight in self.class_weights):
            _fail("finetune.class_weights", "every class weight must be > 0.")


@dataclass(frozen=True)
class AugmentParams:
    """Training-time augmentation, applied to the train split only: images through torchvision.transforms.v2,
    recordings' log-mel features through SpecAugment's masks (:mod:`crosstune.data.spec_augment`)."""

    section: ClassVar[str] = "augment"

    crop_scale_min: float = 1.0  # RandomResizedCrop area scale (min, 1); 1.0 = off
    horizontal_flip: float = 0.0  # probability
    vertical_flip: float = 0.0  # probability (where up and down mean nothing: micrographs, aerial images)
    scale_jitter: float = 0.0  # detection: images (and boxes) rescaled by a factor in [1 - s, 1 + s]; 0 = off
    color_jitter: float = 0.0  # brightness/contrast/saturation strength; 0 = off
    randaugment_ops: int = 0  # RandAugment operations per image; 0 = off
    randaugment_magnitude: int = 9
    time_mask_prob: float = 0.0  # audio: share of frames masked in spans (SpecAugment); 0 = off
    time_mask_length: int = 10  # frames per time mask (10 ms each for Whisper)
    freq_mask_prob: float = 0.0  # audio: share of mel bins masked in bands; 0 = off
    freq_mask_length: int = 10  # mel bins per frequency mask

    def __post_init__(self) -> None:
        _check_range("augment.crop_scale_min", self.crop_scale_min, 0.0, 1.0, False, True)
        _check_range("augment.horizontal_flip", self.horizontal_flip, 0.0, 1.0)
        _check_range("augment.vertical_flip", self.vertical_flip, 0.0, 1.0)
        _check_range("augment.scale_jitter", self.scale_jitter, 0.0, 1.0, True, False)
        _check_range("augment.color_jitter", self.color_jitter, 0.0, 1.0)
        _check_range("augment.randaugment_ops", self.randaugment_ops, low=0)
        _check_range("augment.randaugment_magnitude", self.randaugment_magnitude, 0, 30)
        _check_range("augment.time_mask_prob", self.time_mask_prob, 0.0, 1.0, True, False)
        _check_range("augment.freq_mask_prob", self.freq_mask_prob, 0.0, 1.0, True, False)
        _check_range("augment.time_mask_length", self.time_mask_length, low=1)
        _check_range("augment.freq_mask_length", self.freq_mask_length, low=1)

    @property
    def enabled(self) -> bool:
        """Whether an image transform is on."""
        return (self.crop_scale_min < 1.0 or self.horizontal_flip > 0 or self.vertical_flip > 0
                or self.scale_jitter > 0 or self.color_jitter > 0 or self.randaugment_ops > 0)

    @property
    def masks_audio(self) -> bool:
        """Whether SpecAugment's masks are on."""
        return self.time_mask_prob > 0 or self.freq_mask_prob > 0


@dataclass(frozen=True)
class TextAugmentParams:
    """Offline token-level augmentation of texts (EDA-style, without synonyms): extra copies of each row
    of the named splits, made once by the backbone stage from the token ids."""

    section: ClassVar[str] = "text_augment"

    copies: int = 0  # augmented copies added per row; 0 = off
    swap: float = 0.1  # fraction of a row's tokens swapped with another random token position
    delete: float = 0.1  # probability each token is deleted
    mask: float = 0.1  # probability each token becomes the tokenizer's mask (or unknown) token
    splits: tuple[str, ...] = ("train", "source")  # which splits get copies (never validation or test)

    def __post_init__(self) -> None:
        _check_range("text_augment.copies", self.copies, 0, 20)
        _check_range("text_augment.delete", self.delete, 0.0, 1.0, True, False)
        _check_range("text_augment.swap", self.swap, 0.0, 1.0)
        _check_range("text_augment.mask", self.mask, 0.0, 1.0)
        for name in self.splits:
            _check_choice("text_augment.splits", name, ("train", "source"))


@dataclass(frozen=True)
class CacheParams:
    """The frozen-prefix cache: run the frozen embeddings/stem and bottom blocks once per split."""

    section: ClassVar[str] = "cache"

    enabled: bool = True  # used whenever it is valid (no augmentation or unfreezing on the frozen path)
    dtype: str = "float32"  # float32 (exact) | float16 | bfloat16 (half the disk; results within rounding)
    batch_size: int = 64  # examples per forward pass while building the cache

    def __post_init__(self) -> None:
        _check_choice("cache.dtype", self.dtype, ("float32", "float16", "bfloat16"))
        _check_range("cache.batch_size", self.batch_size, low=1)


@dataclass(frozen=True)
class ProbeParams:
    """The probe of a task whose head cannot be fitted in closed form (detection: the feature pyramid and FCOS's
    towers, trained by gradient on the frozen backbone). Its own section, so a change of the fine-tuning rate
    never retrains it; the closed-form probes of the other tasks read none of it."""

    section: ClassVar[str] = "probe"

    epochs: int = 8
    lr: float = 1.0e-3  # AdamW, one-cycle (linear warmup and decay) as fine-tuning's schedule
    batch_size: int = 8

    def __post_init__(self) -> None:
        _check_range("probe.epochs", self.epochs, low=1)
        _check_range("probe.lr", self.lr, low=0.0, low_inclusive=False)
        _check_range("probe.batch_size", self.batch_size, low=1)


@dataclass(frozen=True)
class EvaluateParams:
    """Test-split evaluation and the baselines reported beside the fine-tuned model."""

    section: ClassVar[str] = "evaluate"

    batch_size: int = 64
    baselines: tuple[str, ...] = ("majority", "tfidf_logreg")
    guard: str = "fallback"  # off | report (fine-tuned vs scratch vs probe) | fallback (export the best on validation)
    scratch: str = "auto"  # auto (train the guard's scratch model only when the fine-tuned model validates below a
    #                        learned baseline) | always
    num_beams: int = 1  # transcription: 1 = greedy decoding, more = beam search of that width (test transcripts)

    def __post_init__(self) -> None:
        _check_choice("evaluate.guard", self.guard, ("off", "report", "fallback"))
        _check_choice("evaluate.scratch", self.scratch, ("auto", "always"))
        _check_range("evaluate.batch_size", self.batch_size, low=1)
        _check_range("evaluate.num_beams", self.num_beams, low=1)


SECTIONS: dict[str, type] = {
    "base": BaseParams,
    "prepare": PrepareParams,
    "backbone": BackboneParams,
    "freeze": FreezeParams,
    "head": HeadParams,
    "finetune": FinetuneParams,
    "augment": AugmentParams,
    "text_augment": TextAugmentParams,
    "cache": CacheParams,
    "probe": ProbeParams,
    "evaluate": EvaluateParams,
}


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field annotation, converting YAML lists to tuples."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        errors = []
        for option in typing.get_args(annotation):
            try:
                return _coerce(key, value, option)
            except ConfigError as error:
                errors.append(str(error))
        _fail(key, f"{value!r} matches none of the allowed types ({'; '.join(errors)}).")
    if origin is dict:
        key_type, value_type = typing.get_args(annotation)
        if not isinstance(value, dict):
            _fail(key, f"expected a mapping (key: value lines), got {value!r}.")
        def as_text(item: Any) -> Any:  # YAML reads label names such as 0 or 1.5 as numbers
            return str(item) if isinstance(item, (int, float)) and not isinstance(item, bool) else item

        return {_coerce(key, as_text(name), key_type): _coerce(f"{key}.{name}", as_text(item), value_type)
                for name, item in value.items()}
    if origin is tuple:
        item_type = typing.get_args(annotation)[0]
        if not isinstance(value, (list, tuple)):
            _fail(key, f"expected a list, got {value!r}.")
        return tuple(_coerce(f"{key}[{index}]", item, item_type) for index, item in enumerate(value))
    if dataclasses.is_dataclass(annotation):
        return from_mapping(annotation, value, key)
    if annotation is bool:
        if not isinstance(value, bool):
            _fail(key, f"expected true or false, got {value!r}.")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(key, f"expected a whole number, got {value!r}.")
        return value
    if annotation is float:
        if isinstance(value, bool):
            _fail(key, f"expected a number, got {value!r}.")
        if isinstance(value, str):  # PyYAML reads 5e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                _fail(key, f"expected a number, got {value!r}.")
        if not isinstance(value, (int, float)):
            _fail(key, f"expected a number, got {value!r}.")
        return float(value)
    if annotation is str:
        if isinstance(value, bool):
            # YAML 1.1 reads a bare `off` / `on` (our choice names: `guard: off`, `mixed_precision: off`) as a
            # boolean, and `dvc exp run -S` rewrites params.yaml without the quotes that kept them strings
            value = "on" if value else "off"
        if not isinstance(value, str):
            _fail(key, f"expected a string, got {value!r}.")
        return value
    raise TypeError(f"config field {key} has an unsupported annotation {annotation!r}")


def from_mapping(cls: type[T], data: Any, section: str) -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        _fail(section, f"expected a mapping of keys to values, got {type(data).__name__}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        _fail(f"{section}.{unknown[0]}", f"unknown key; valid keys in '{section}': {sorted(names)}")
    values = {name: _coerce(f"{section}.{name}", data[name], hints[name]) for name in names if name in data}
    return cls(**values)


def section_problems(section: str, data: Any) -> list[str]:
    """Every problem in one section, not only the first: unknown keys (with the nearest valid one), wrong
    types, then the value checks of ``__post_init__``, each failing key set back to its default so the
    next check can run. What `crosstune check` reports before any stage starts."""
    import difflib

    cls = SECTIONS[section]
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return [f"params.yaml: {section}: expected a mapping of keys to values, got {type(data).__name__}."]
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    problems = []
    for key in sorted(set(data) - set(names)):
        near = difflib.get_close_matches(str(key), names, n=1)
        hint = f"did you mean '{near[0]}'? " if near else ""
        problems.append(f"params.yaml: {section}.{key}: unknown key; {hint}valid keys in '{section}': {sorted(names)}")
    values = {}
    for name in names:
        if name in data:
            try:
                values[name] = _coerce(f"{section}.{name}", data[name], hints[name])
            except (ConfigError, TypeError, ValueError) as error:
                problems.append(str(error))
    while True:
        try:
            cls(**values)
            return problems
        except ConfigError as error:
            problems.append(str(error))
            name = getattr(error, "key", "").removeprefix(f"{section}.")
            if name not in values:  # a check across keys, or one whose key is not this section's own
                return problems
            del values[name]


def params_problems(params: dict[str, Any]) -> list[str]:
    """Every problem of every section of a parsed params file (sections absent from it take defaults)."""
    return [problem for section in SECTIONS for problem in section_problems(section, params.get(section))]


def read_params_file(path: str | Path = DEFAULT_PARAMS_PATH) -> dict[str, Any]:
    """Parse the whole params file, with errors that name it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file; run from the repository root or pass --params.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}.")
    return data


def load_section(cls: type[T], path: str | Path = DEFAULT_PARAMS_PATH) -> T:
    """Load one section of the params file into its typed dataclass ``cls`` (defaults where absent):
    ``load_section(FinetuneParams, path) -> FinetuneParams``. The class is looked up in :data:`SECTIONS` by its
    section name, so a subclass registered there (the dependency test's recording one) is what is built."""
    section = getattr(cls, "section", None)
    if section not in SECTIONS:
        raise ConfigError(f"{cls.__name__} is not a params section; valid sections: {sorted(SECTIONS)}")
    return from_mapping(SECTIONS[section], read_params_file(path).get(section), section)


def to_dict(params: Any) -> dict[str, Any]:
    """Plain-JSON form of a params dataclass (tuples become lists), for saving next to outputs."""
    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return value

    return plain(dataclasses.asdict(params))
