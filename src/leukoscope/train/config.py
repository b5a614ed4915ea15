"""``TrainConfig``: every setting of a training run, resolved and written next to its outputs.

Precedence: explicit options > ``--config run.yaml`` > the model's ``train_defaults`` > the field
defaults here. ``None`` means "not set" until ``resolved()`` fills it from the model. A classical
model (a scikit-learn pipeline on image features) takes only ``CLASSICAL`` settings; the others are
a network's and must stay unset.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from leukoscope.data.rare import MIN_CELLS, check_rare
from leukoscope.errors import ConfigError

if TYPE_CHECKING:
    import torch

SPLIT_PROTOCOLS = ("auto", "official")
#: Settings added after run directories were first written, with the value that reproduces those
#: runs (a run from before ``min_steps`` trained exactly its epochs).
ADDED = {"min_steps": 0, "min_cells": 0, "rare": "other", "positive": None, "target_sensitivity": None,
         "split": None, "dedupe": False, "class_map": None, "outliers": None, "outlier_class": None}
BALANCE = ("loss", "sampler", "none")
DEVICES = ("auto", "cpu", "cuda")
#: Settings of where a run executes, not of what it learns: a run started on one device resumes on another.
RUNTIME = ("device",)
#: The settings a classical run uses: which rows, how they are split, which features.
CLASSICAL = ("model", "subset", "seed", "val", "test", "split_protocol", "features", "min_cells", "rare",
             "positive", "target_sensitivity", "split", "dedupe", "class_map", "outliers", "outlier_class")


@dataclass
class TrainConfig:
    model: str = "efficientnet_lite0"
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    img_size: int | None = None
    patience: int | None = None
    grayscale: bool = False
    subset: float = 1.0
    augment: bool = True
    aug_strength: float = 1.0
    stain: str = "none"
    #: HED stain jitter while training (augment.hed): 0 off; ~0.2 mimics another lab's stain
    stain_jitter: float = 0.0
    crop_to_cell: bool = False
    tta: bool = False
    seed: int = 0
    val: float = 0.15
    test: float = 0.15
    split_protocol: str = "auto"
    #: a split file (``data split --out``): its sides are used as they are (val, test, subset unused)
    split: str | None = None
    #: merge the audit's duplicate clusters into the groups before splitting (``audit.groups``)
    dedupe: bool = True
    #: the class map the labels went through (``data.classmap.ClassMap.to_json``), recorded in the bundle
    class_map: dict[str, Any] | None = None
    cv: int = 0
    #: pretrained models: fit the head on frozen embeddings (logistic regression) before fine-tuning
    head_warmup: bool = True
    #: top stages unfrozen when fine-tuning (-1: the whole network, 0: the head only)
    finetune_depth: int = -1
    label_smoothing: float = 0.1
    weight_decay: float = 0.01
    warmup_epochs: float = 0.5
    balance: str = "loss"
    threads: int = 0
    #: where a network trains: auto (cuda when torch sees one, else cpu), cpu or cuda
    device: str = "auto"
    #: keep every BatchNorm in eval mode while fine-tuning (running statistics frozen, affine trained)
    freeze_bn: bool | None = None
    #: learning rate of everything but the head, as a fraction of ``lr`` (None: the model's default)
    body_lr: float | None = None
    #: at least this many optimiser steps: a small data set gets more epochs (and patience in
    #: proportion). Only the model's default epochs are stretched; an explicit ``epochs`` is kept
    #: exactly unless ``min_steps`` is given too.
    min_steps: int | None = None
    #: classical models: the image features the pipeline is fitted on (default handcrafted)
    features: str | None = None
    #: classes with fewer labelled cells are merged into ``other`` or dropped (``rare``): data/rare.py
    min_cells: int = MIN_CELLS
    rare: str = "other"
    #: the class whose decision threshold is chosen on validation (``evaluate.operating``; None: argmax)
    positive: str | None = None
    #: the threshold is the highest reaching this validation sensitivity (None: Youden's J)
    target_sensitivity: float | None = None
    #: a data set of cells the model must not call: the unfamiliarity score learns them (``train.outliers``)
    outliers: str | None = None
    #: only this class of ``outliers`` is what to flag; its other cells are familiar kinds of another lab
    outlier_class: str | None = None

    @property
    def family(self) -> str:
        """``network`` or ``classical``: what the registry says ``model`` is."""
        from leukoscope.models.registry import get_model

        try:
            return get_model(self.model).family
        except ConfigError as e:
            raise ConfigError(f"--model: {e}") from None

    @classmethod
    def from_file(cls, path: Path) -> dict[str, Any]:
        """Settings from a YAML or JSON file (only known keys, each of its field's type)."""
        data = read_settings(path)
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of settings")
        data = {k.replace("-", "_") if isinstance(k, str) else k: v for k, v in data.items()}
        unknown = sorted(str(k) for k in set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}")
        return {k: _typed(k, v, where=f"{path}: {k}") for k, v in data.items()}

    @classmethod
    def build(cls, file: Path | None = None, **options: Any) -> TrainConfig:
        """File settings overlaid with the options that are not None; every value type-checked before use."""
        data = cls.from_file(file) if file else {}
        data.update({k: _typed(k, v, where=f"--{k.replace('_', '-')}") if k in KINDS else v
                     for k, v in options.items() if v is not None})
        if isinstance(data.get("outliers"), str) and data["outliers"].strip():  # as given where it was given
            data["outliers"] = os.path.realpath(data["outliers"])  # one spelling of one folder
        try:
            return cls(**data)
        except TypeError as e:
            raise ConfigError(f"bad training settings ({e})") from None

    def resolved(self) -> TrainConfig:
        """Unset fields filled from the model's ``train_defaults`` (networks) or the default feature
        kind (classical), then validated."""
        if self.family == "classical":
            out = dataclasses.replace(self, features=self.features or "handcrafted")
        else:
            out = self._network_defaults()
        out.check()
        return out

    def _network_defaults(self) -> TrainConfig:
        from leukoscope.models.networks import network_class

        defaults = network_class(self.model).train_defaults
        filled: dict[str, Any] = {k: defaults.get(k) if v is None else v for k, v in self.as_dict().items()}
        if self.min_steps is None:  # the model's step floor stretches only the model's own epochs
            filled["min_steps"] = 0 if self.epochs is not None else defaults.get("min_steps") or 0
        return TrainConfig(**filled)

    def check(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        need(0 < self.subset <= 1, f"--subset must be a fraction in (0, 1], got {self.subset}")
        need(self.split_protocol in SPLIT_PROTOCOLS,
             f"--split-protocol must be one of {', '.join(SPLIT_PROTOCOLS)}, got {self.split_protocol!r}")
        # numpy seeds only take [0, 2**32): anything else would fail deep in the loop
        need(type(self.seed) is int and 0 <= self.seed < 2**32,
             f"--seed must be an integer in [0, 2**32 - 1], got {self.seed!r}")
        check_rare(self.min_cells, self.rare)
        if self.class_map is not None:
            from leukoscope.data.classmap import from_json

            from_json(self.class_map, "class_map")
        if self.target_sensitivity is not None:
            need(self.positive is not None, "--target-sensitivity needs --positive CLASS")
            need(0 < self.target_sensitivity <= 1,
                 f"--target-sensitivity must be in (0, 1], got {self.target_sensitivity}")
        need(self.positive is None or not self.cv, "--positive chooses a threshold on one split's "
             "validation side, not with --cv")
        need(self.split is None or (self.split_protocol == "auto" and self.cv == 0 and self.subset == 1),
             "--split FILE gives the sides: leave out --split-protocol, --cv and --subset")
        need(self.outliers is None or bool(self.outliers.strip()), "--outliers: empty path; name a folder or "
             "a CSV of images")
        need(self.outlier_class is None or self.outliers is not None, "--outlier-class needs --outliers DATA")
        need(self.outliers is None or (not self.cv and (self.val > 0 or self.split is not None)),
             "--outliers fits the unfamiliarity score on one split's validation side: not with --cv or "
             "val 0")
        if self.family == "classical":
            self._check_classical()
            return
        need(self.features is None, f"--features is for classical models; {self.model} learns its own")
        need(self.epochs is not None and self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
        need(self.lr is not None and self.lr > 0, f"--lr must be > 0, got {self.lr}")
        need(self.batch_size is not None and self.batch_size >= 1,
             f"--batch-size must be >= 1, got {self.batch_size}")
        need(self.img_size is not None and 16 <= self.img_size <= 1024,
             f"--img-size must be in [16, 1024], got {self.img_size}")
        need(self.patience is not None and self.patience >= 1,
             f"--patience must be >= 1, got {self.patience}")
        need(self.aug_strength >= 0, f"--aug-strength must be >= 0, got {self.aug_strength}")
        need(0 <= self.stain_jitter <= 1, f"--stain-jitter must be in [0, 1], got {self.stain_jitter}")
        need(self.balance in BALANCE, f"balance must be one of {', '.join(BALANCE)}, got {self.balance!r}")
        need(self.cv == 0 or self.cv >= 2, f"--cv must be 0 (off) or >= 2, got {self.cv}")
        need(self.min_steps is None or self.min_steps >= 0, f"min_steps must be >= 0, got {self.min_steps}")
        # settings a config file may give: checked here, not as a traceback from torch after decoding
        need(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        need(self.threads >= 0, f"threads must be >= 0 (0: one per core), got {self.threads}")
        need(self.finetune_depth >= -1, f"finetune_depth must be >= -1 (-1: all), got {self.finetune_depth}")
        need(self.body_lr is None or self.body_lr >= 0,
             f"body_lr must be >= 0 (0: the body does not learn), got {self.body_lr}")
        need(self.device in DEVICES, f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.device == "cuda":  # refused before any data is read, not epochs later
            self.torch_device()
        from leukoscope.models.stain import check_method

        check_method(self.stain)

    def _check_classical(self) -> None:
        """A network's settings are refused by name rather than silently ignored."""
        from leukoscope.features import list_feature_kinds

        defaults = TrainConfig().as_dict()
        given = sorted(k for k, v in self.as_dict().items() if k not in CLASSICAL and v != defaults[k])
        if given:
            flags = ", ".join(f"--{k.replace('_', '-')}" for k in given)
            raise ConfigError(f"--model {self.model} is a classical model; these settings are for "
                              f"networks only: {flags}")
        if self.features not in list_feature_kinds():
            raise ConfigError(f"--features must be one of {', '.join(list_feature_kinds())}, "
                              f"got {self.features!r}")

    def torch_device(self) -> torch.device:
        """The device ``device`` names here; ``cuda`` on a machine without one is refused by name."""
        import torch

        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device cuda: torch {torch.__version__} sees no CUDA device on this "
                              "machine; use --device auto or --device cpu")
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def schedule(self, steps_per_epoch: int) -> tuple[int, int]:
        """Epochs and early-stopping patience for this many steps per epoch (see ``min_steps``)."""
        epochs, patience = self.epochs or 1, self.patience or self.epochs or 1
        stretched = max(epochs, -(-(self.min_steps or 0) // max(steps_per_epoch, 1)))
        return stretched, -(-patience * stretched // epochs)

    def stretch_note(self, steps_per_epoch: int) -> str | None:
        """One line saying that ``schedule`` added epochs to this run, and why (None when it did not)."""
        epochs, _ = self.schedule(steps_per_epoch)
        if epochs <= (self.epochs or 1):
            return None
        given = f"--subset {self.subset:g} gives" if self.subset < 1 else "the training side gives"
        return (f"stretched: {given} {steps_per_epoch} optimiser step(s) per epoch, {self.epochs} epoch(s) = "
                f"{steps_per_epoch * (self.epochs or 1)} steps; padded to {self.min_steps} optimiser steps "
                f"({epochs} epochs, repeating the data) because {self.model} fine-tunes poorly in fewer "
                "steps on small sets; --min-steps 0 (or --epochs N) turns it off")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def same_as(self, saved: dict[str, Any]) -> bool:
        """True when ``saved`` (an earlier ``as_dict``) describes this run; settings added to
        TrainConfig since then count as their defaults, so older run directories still resume."""
        defaults = {**TrainConfig().as_dict(), **ADDED}
        old = {**{k: defaults[k] for k in defaults if k not in saved}, **saved}
        return _what_is_learnt(old) == _what_is_learnt(self.as_dict())

    def write(self, folder: Path) -> None:
        """``config.yaml`` (for ``--config``) and ``config.json`` in ``folder``, atomically."""
        import yaml

        from leukoscope.io import write_json_atomic, write_text_atomic

        folder = Path(folder)
        write_json_atomic(folder / "config.json", self.as_dict())
        write_text_atomic(folder / "config.yaml", yaml.safe_dump(self.as_dict(), sort_keys=False))


def read_settings(path: Path) -> Any:
    """What a YAML or JSON settings file holds; a missing, unreadable or unparsable file (non-UTF-8 bytes,
    ``!!python/object`` tags: safe_load refuses them) is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text) or {}
    except Exception as e:  # noqa: BLE001 - any read or parse error is a bad config file
        raise ConfigError(f"{path}: cannot parse ({' '.join(str(e).split())})") from None


def _kinds(hint: Any) -> tuple[type, ...]:
    """The plain types an annotation allows: ``int | None`` -> (int, NoneType), ``dict[str, Any]`` ->
    (dict,)."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return tuple(typing.get_origin(a) or a for a in args)


#: Each setting's allowed types, from the field annotations (one source of truth for what a file may hold).
KINDS = {name: _kinds(hint) for name, hint in typing.get_type_hints(TrainConfig).items()}
_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping",
          type(None): "null"}


def _fits(value: Any, kind: type) -> bool:
    if isinstance(value, bool) or kind is bool:  # a bool is an int to Python, never to a setting
        return kind is bool and isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and math.isfinite(value)
    return isinstance(value, kind)


def _typed(name: str, value: Any, where: str) -> Any:
    """``value`` if it is of setting ``name``'s type, else a ConfigError naming ``where``. A numeric
    string for a number setting becomes that number: PyYAML (YAML 1.1) reads ``1e-3`` without a dot
    as a string, so ``lr: 1e-3`` in a normal-looking config is meant as a number."""
    kinds = KINDS[name]
    if float in kinds and isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if any(_fits(value, kind) for kind in kinds):
        return value
    raise ConfigError(f"{where} must be {' or '.join(_WORDS[k] for k in kinds)}, got {value!r}")


def _what_is_learnt(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in RUNTIME}
