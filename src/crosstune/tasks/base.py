"""The interface every task provides: what is predicted, and everything that follows from it.

A task (Hugging Face's ``pipeline`` tasks and AutoGluon's problem types are the models) is a typed record
with behaviour, kept in :data:`crosstune.tasks.registry.TASKS` under ``prepare.task``. The stages ask it how
to read and encode labels, how many outputs the model has, which losses and metrics suit, which metric is the
headline and which way is better, how to fit the closed-form probe, what a prediction looks like and what
the exported Hugging Face model is; they never ask which task it is. ``docs/adding-a-task.md`` lists what a
new task must provide and which files it touches.

Torch-free at import: methods import what they need, so the registry costs nothing to load (`crosstune check`,
the cache stage's plan, `--help`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

from crosstune.errors import ConfigError, DataError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch


class Task:
    """What one kind of prediction needs from the pipeline.

    Class attributes (the record):
        name: the ``prepare.task`` value.
        output: what the model predicts, in words (one value per example, one label per token, ...).
        modalities: the inputs the task accepts (:mod:`crosstune.modalities`).
        losses: ``finetune.loss`` names that suit it; the first is its default.
        metrics: validation metric name -> higher is better, for ``finetune.select_metric``, sweeps and tune.
        headline: the test metric that ranks models (the guard, baselines, reports).
        summary_metrics: metrics logged every epoch and reported for the probe and the guard, in order.
        baseline_metrics: metrics reported for each baseline, in order.
        card_metrics: the test metrics an exported model's card shows.
        label_dtype: dtype of the prepared tables' ``label`` column.
        hf_auto_class, hf_problem_type: the Hugging Face model an ``head.type: hf`` export loads as.
        prediction_shape: what ``crosstune.load(DIR).predict`` returns, in words, for model cards.
        pooling: a ``head.pooling`` the task imposes ("tokens": the head sees every token), or "" (the user's).
        prepared_columns: columns of the prepared tables besides the input and ``label`` that the task keeps
            (a tagged sentence's word offsets) and evaluate's predictions table carries.
        model_form: ``head``: a pretrained backbone with a new head; ``recogniser``: a whole pretrained
            encoder-decoder whose decoder is the head (:mod:`crosstune.transfer_model.speech_recognition`);
            ``detector``: a pretrained backbone inside a torchvision detector
            (:mod:`crosstune.transfer_model.detection`).
        own_params: params keys only this task reads (the report leaves them out of another task's runs).
        confusion_matrix: the report shows the test confusion matrix (one class per example; not for numbers,
            tag sequences or transcripts).
    """

    name: ClassVar[str] = ""
    output: ClassVar[str] = ""
    modalities: ClassVar[tuple[str, ...]] = ()
    losses: ClassVar[tuple[str, ...]] = ()
    metrics: ClassVar[Mapping[str, bool]] = {}
    headline: ClassVar[str] = ""
    summary_metrics: ClassVar[tuple[str, ...]] = ()
    baseline_metrics: ClassVar[tuple[str, ...]] = ()
    card_metrics: ClassVar[tuple[str, ...]] = ()
    label_dtype: ClassVar[Any] = str
    hf_auto_class: ClassVar[str] = ""
    hf_problem_type: ClassVar[str] = ""
    pooling: ClassVar[str] = ""
    reads_files: ClassVar[bool] = False  # read_examples reads formats of the task's own (no table column of inputs)
    cleans_texts: ClassVar[bool] = True  # prepare cleans texts (crosstune.data.splitting.normalise_text), and so
    # must everything that feeds the model new texts (predict, an export's tokenizer)
    prediction_shape: ClassVar[str] = '[{"label": ..., "score": ...}]'  # what predict returns, for model cards
    prepared_columns: ClassVar[tuple[str, ...]] = ()
    model_form: ClassVar[str] = "head"
    own_params: ClassVar[tuple[str, ...]] = ()
    confusion_matrix: ClassVar[bool] = False

    # --- reading labels (the prepare stage) -------------------------------------------------------------

    def read_examples(self, path: Path, params: Any) -> "pd.DataFrame | None":
        """A file in a format of the task's own (tagged sentences), read into a prepared frame; None (the default)
        reads tables and folders as every per-example task does (:func:`crosstune.data.splitting.load_examples`)."""
        return None

    def read_labels(self, values: "pd.Series", path: Path) -> "pd.Series":
        """The label column of one input file, validated and converted (values already non-empty)."""
        raise NotImplementedError

    def check_modality(self, modality: str, path: Path) -> None:
        """A :class:`DataError` when inputs of ``modality`` (read from ``path``) cannot be labelled for this task."""
        if modality not in self.modalities:
            from crosstune.tasks.registry import TASKS

            suitable = sorted(name for name in TASKS if modality in TASKS.get(name).modalities)
            raise DataError(f"{path}: {modality} inputs support prepare.task: {' or '.join(suitable)}, not "
                            f"{self.name}; set prepare.task to one of those.")

    def check_training_labels(self, train: "pd.DataFrame", path: Path, minimum: int) -> None:
        """Refuse training data the task cannot learn or be scored on (too few examples of a class)."""

    @staticmethod
    def check_counts(counts: Mapping[str, int], path: Path, minimum: int, counted: str, grouped_by: str,
                     none_fix: str) -> None:
        """Refuse training data holding no ``counted`` ("boxes", "entities") at all, or fewer than ``minimum`` of some
        ``grouped_by`` ("class(es)", "type(s)"): nothing to learn, or too few to learn and score that one on."""
        if not counts:
            raise DataError(f"{path}: no {counted} in the training data; {none_fix}.")
        small = {name: count for name, count in counts.items() if count < minimum}
        if small:
            raise DataError(f"{path}: too few training {counted} of {grouped_by} {small} (need at least "
                            f"prepare.min_examples_per_class={minimum} each); add more, drop those, or lower "
                            f"prepare.min_examples_per_class.")

    def stratify_by(self, frame: "pd.DataFrame") -> "pd.Series | None":
        """What held-out splits keep the proportions of (the labels), or None for a plain random split."""
        return None

    def hold_out(self, frame: "pd.DataFrame", fraction: float, seed: int) -> tuple["pd.DataFrame", "pd.DataFrame"]:
        """(kept, held out): ``fraction`` of ``frame`` held out as a validation (or test) split; by default a seeded
        random split keeping the proportions of :meth:`stratify_by`."""
        from sklearn.model_selection import train_test_split

        kept, held_out = train_test_split(frame, test_size=fraction, random_state=seed,
                                          stratify=self.stratify_by(frame))
        return kept, held_out

    def label_names(self, train: "pd.DataFrame") -> list[str]:
        """The sorted names of the model's outputs (index i is output i), or [] when outputs are values."""
        return []

    def check_test_labels(self, test: "pd.DataFrame", labels: list[str], path: Path) -> None:
        """Refuse test labels the model cannot predict."""

    def check_source_domain(self, path: Path) -> None:
        """A :class:`DataError` when a labelled source domain cannot be used with this task."""
        raise DataError(f"{path}: a source domain needs labels to align with the target's, which prepare.task: "
                        f"{self.name} has not; set data.source to data/source (no source domain).")

    def label_counts(self, frame: "pd.DataFrame") -> dict[str, int]:
        """Examples per label for the prepare summary (nothing for values)."""
        return {}

    def labelled_rows(self, frame: "pd.DataFrame") -> "pd.DataFrame":
        """The rows of a prepared table that carry a label (not the unlabelled target pool)."""
        return frame

    # --- encoding and training ------------------------------------------------------------------------------

    def encode_labels(self, labels: "pd.Series", names: Sequence[str]) -> "torch.Tensor":
        """Training targets for a prepared label column. Shape: (N,)."""
        raise NotImplementedError

    def encode_texts(self, tokenizer: Any, frame: "pd.DataFrame", targets: "torch.Tensor",
                     max_length: int) -> tuple[Any, dict[str, int]]:
        """A prepared text split tokenized once for training and evaluation (the backbone stage; ``targets`` from
        :meth:`encode_labels`), and counts for the stage's summary. Default: one row per text, truncated."""
        from crosstune.data.text_encoding import encode_texts

        return encode_texts(tokenizer, frame["text"].tolist(), targets, max_length), {}

    def decode_texts(self, tokenizer: Any, texts: list[str], config: dict[str, Any], max_length: int) -> Any:
        """New texts as an unlabelled split for ``crosstune predict`` (``config``: the model's), cleaned as
        training texts were."""
        import torch

        from crosstune.data.splitting import normalise_text
        from crosstune.data.text_encoding import encode_texts

        # an export's tokenizer cleans texts itself (crosstune.inference.exported_tokenizer): not twice
        lowercase = bool(config.get("lowercase"))  # prepare.lowercase, as the model recorded it
        clean = texts if config.get("tokenizer_normalises") else [normalise_text(text, lowercase) for text in texts]
        return encode_texts(tokenizer, clean, torch.zeros(len(clean)), max_length)

    def batching(self, config: dict[str, Any], batch_size: int, augment: Any = None) -> Any:
        """How a split of a saved model's task becomes batches, where the task's inputs carry more than the
        modality's (a detection split's boxes); None (the default): the modality's batching."""
        return None

    def decode_inputs(self, values: Sequence[Any], config: dict[str, Any]) -> Any:
        """New inputs as a split for ``crosstune predict`` where the task decodes them its own way (a detector's
        letterboxed canvas); None (the default): the modality decodes them."""
        return None

    def loss_targets(self, targets: "torch.Tensor") -> "torch.Tensor":
        """What the loss compares a split's outputs with (validation, the probe's fit), from its encoded targets."""
        return targets

    def baseline_examples(self, frame: "pd.DataFrame") -> tuple[list[Any], list[Any]]:
        """(inputs, labels) of a prepared text table as the task's text baselines read them: texts and labels."""
        return list(frame["text"]), list(frame["label"])

    def labelled(self, targets: "np.ndarray") -> "np.ndarray":
        """Boolean mask of the encoded ``targets`` that carry a label."""
        raise NotImplementedError

    def num_outputs(self, labels: Sequence[str]) -> int:
        """Width of the head's output: one per class, or one value."""
        raise NotImplementedError

    def check_loss(self, name: str) -> None:
        """``finetune.loss`` must be a registered loss that suits the task."""
        from crosstune.training.losses import LOSSES

        LOSSES.check(name, "finetune.loss")
        if name not in self.losses:
            raise ConfigError(f"params.yaml: finetune.loss: {name!r} does not suit a {self.name} task; use one of "
                              f"{sorted(self.losses)}.")

    def build_loss(self, name: str, class_weights: "torch.Tensor | None", label_smoothing: float) -> "torch.nn.Module":
        """The training loss ``name`` (from :data:`crosstune.training.losses.LOSSES`), checked against the task."""
        from crosstune.training.losses import LOSSES

        self.check_loss(name)
        if label_smoothing:
            raise ConfigError(f"params.yaml: finetune.label_smoothing applies to classification, not {self.name}; "
                              f"set it to 0.")
        return LOSSES.get(name, "finetune.loss")(class_weights, label_smoothing)

    def class_weights(self, setting: Any, targets: "torch.Tensor", num_labels: int) -> "torch.Tensor | None":
        """``finetune.class_weights`` as loss weights, from the encoded training ``targets`` (unlabelled rows
        included: the task knows which they are); None where weights do not apply."""
        return None

    def validation_metrics(self, model: Any, split: Any, loss_fn: Any, labels: Sequence[str], batching: Any,
                           device: str) -> dict[str, float]:
        """Loss and metrics on a validation split after an epoch (``model``: the run's
        :class:`~crosstune.transfer_model.modules.ModelForward`): the outputs of one pass, scored."""
        from crosstune.inference.outputs import predict_outputs

        outputs = predict_outputs(model, split, batching, device, batching.batch_size * 2)
        targets = split.labels
        loss = float(loss_fn(outputs.to(device), self.loss_targets(targets).to(device)).item())
        return {"loss": loss, **self.score(targets.tolist(), outputs, labels)}

    def check_select_metric(self, name: str) -> None:
        """``finetune.select_metric`` must be one of the task's metrics."""
        if name not in self.metrics:
            raise ConfigError(f"params.yaml: finetune.select_metric: {name!r} does not apply to a {self.name} task; "
                              f"use one of {sorted(self.metrics)}.")

    def is_better(self, metric: str, candidate: float, best: float | None) -> bool:
        """Whether ``candidate`` improves on ``best`` (None: nothing yet) for ``metric``."""
        if best is None:
            return True
        return candidate > best if self.metrics[metric] else candidate < best

    def gain(self, metric: str, candidate: float, reference: float) -> float:
        """How much better ``candidate`` is than ``reference`` on ``metric`` (negative: worse), whichever way
        the metric points: the guard's ``transfer_gain`` and ``finetuning_gain`` and the gain over baselines."""
        return candidate - reference if self.metrics[metric] else reference - candidate

    # --- outputs, metrics, predictions ---------------------------------------------------------------------

    def check_new_inputs(self, inputs: Sequence[Any], config: dict[str, Any]) -> None:
        """Refuse new inputs the saved model (``config``) cannot take whole, before they are decoded."""

    def check_drawing(self, directory: str) -> None:
        """``crosstune predict --draw``: refused by a task with nothing to draw on its inputs."""
        raise ConfigError(f"--draw {directory}: draws a detector's boxes on its images; a {self.name} model has none "
                          f"to draw: leave --draw out.")

    def draw_predictions(self, inputs: Sequence[Any], records: Sequence[dict[str, Any]], directory: Path,
                         labels: Sequence[str]) -> None:
        """Write each input with its predictions drawn into ``directory`` (``crosstune predict --draw``)."""
        raise NotImplementedError

    def report_sections(self, test: dict[str, Any], predictions: Path) -> list[str] | None:
        """The report's HTML sections on this task's test results (``test``: eval.json; ``predictions``: its
        predictions table); None: the shared ones (per-class scores, the most confident mistakes)."""
        return None

    def predict_split(self, model: Any, split: Any, batching: Any, device: str) -> Any:
        """What a model whose form is not ``head`` predicts for a decoded split (``Predictor.predict``); a
        ``head`` model's outputs come from one forward pass (:func:`crosstune.inference.outputs.predict_outputs`)."""
        raise NotImplementedError

    def predictions(self, outputs: "torch.Tensor") -> tuple[list[Any], list[float]]:
        """Predicted classes or values from raw outputs, and their confidence (NaN where there is none)."""
        raise NotImplementedError

    def score(self, targets: Sequence[Any], outputs: "torch.Tensor", labels: Sequence[str],
              per_class: bool = False) -> dict[str, float]:
        """The task's metrics of raw ``outputs`` against encoded ``targets``."""
        raise NotImplementedError

    def score_baseline(self, targets: Sequence[Any], predicted: Sequence[Any],
                       labels: Sequence[str]) -> dict[str, float]:
        """The task's metrics of a baseline's predictions (label names or values) against encoded ``targets``."""
        raise NotImplementedError

    def prediction_records(self, outputs: "torch.Tensor", split: Any, labels: Sequence[str]) -> list[dict[str, Any]]:
        """What ``crosstune predict`` returns per input (``split``: the decoded inputs)."""
        raise NotImplementedError

    def prediction_columns(self, outputs: "torch.Tensor", targets: "torch.Tensor",
                           labels: Sequence[str]) -> dict[str, list[Any]]:
        """The columns the evaluate stage adds to the test table (``metrics/predictions.csv``; ``targets``: the
        test split's encoded labels)."""
        raise NotImplementedError

    def examples_figure(self, path: str | Path, table: "pd.DataFrame", inputs: dict[str, Any]) -> None:
        """The evaluate stage's picture of test examples (``inputs``: the modality's, for drawing them)."""
        raise NotImplementedError

    # --- the closed-form probe ------------------------------------------------------------------------------

    def fit_output_layer(self, inputs: "np.ndarray", targets: "np.ndarray", num_outputs: int, strength: float,
                         class_weights: "torch.Tensor | None", seed: int) -> tuple["np.ndarray", "np.ndarray"]:
        """(weight (outputs, features), bias) of the head's output layer fitted in closed form on standardised
        ``inputs`` with inverse regularisation ``strength`` (the probe stage)."""
        raise NotImplementedError

    # --- selection -----------------------------------------------------------------------------------------

    def selection_examples(self, frame: "pd.DataFrame", rows: Sequence[int], column: str) -> tuple[list[Any], Any]:
        """The inputs and labels transferability is scored on, for sampled ``rows`` of a prepared table: one
        input (the ``column`` value) and one label per row."""
        import numpy as np

        return frame[column].iloc[list(rows)].tolist(), np.asarray(frame["label"].iloc[list(rows)])

    def transferability(self, score: str) -> Any:
        """The ``backbone.score`` function ``(features, labels) -> float`` for this task's labels."""
        raise NotImplementedError

    def block_transferability(self) -> Any:
        """LogME for this task's labels: the per-block score ``freeze.depth: auto`` reads."""
        raise NotImplementedError

    # --- export ---------------------------------------------------------------------------------------------

    def hf_config(self, config: Any, labels: Sequence[str]) -> None:
        """Set the task's fields (label maps, problem type) on a Hugging Face model config, in place."""
        config.problem_type = self.hf_problem_type
