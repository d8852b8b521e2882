"""bundle.json: the one definition of every key, validated on read and on publish.

`python -m training.bundle schema` prints its JSON Schema (docs/bundle.schema.json).
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    model_validator,
)

from training.bundle.features import FeatureEncoder, FittedField

FORMAT_VERSION = 1
INPUTS = ("feature_index", "feature_value")
OUTPUTS = ("score", "raw", "attention", "pair_contribution", "linear_contribution")
Task = Literal["ctr", "rating"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class Sigmoid(_Model):
    """ctr: score = sigmoid(raw), a click probability."""

    kind: Literal["sigmoid"]


class Clip(_Model):
    """rating: score = raw clipped to the training labels' range."""

    kind: Literal["clip"]
    min: float
    max: float


Link = Annotated[Sigmoid | Clip, Field(discriminator="kind")]


class TensorSpec(_Model):
    """One graph input or output; `batch` is the dynamic axis."""

    dtype: Literal["int64", "float32"]
    shape: list[int | Literal["batch"]]


class IOSignature(_Model):
    """The graph's inputs and outputs in order (DESIGN.md, contract 2)."""

    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]


def io_signature(num_fields: int, num_pairs: int) -> IOSignature:
    """The I/O every bundle's graph has for F fields and P pairs."""
    index = TensorSpec(dtype="int64", shape=["batch", num_fields])
    per_field = TensorSpec(dtype="float32", shape=["batch", num_fields])
    per_row = TensorSpec(dtype="float32", shape=["batch"])
    per_pair = TensorSpec(dtype="float32", shape=["batch", num_pairs])
    return IOSignature(
        inputs={"feature_index": index, "feature_value": per_field},
        outputs={
            "score": per_row,
            "raw": per_row,
            "attention": per_pair,
            "pair_contribution": per_pair,
            "linear_contribution": per_field,
        },
    )


class NetworkConfig(_Model):
    """The AFM/FM configuration the weights were built with (training.model.AFMConfig)."""

    num_features: PositiveInt
    num_fields: PositiveInt
    embedding_dim: PositiveInt
    attention_dim: PositiveInt
    attention: bool
    dropout: float = Field(ge=0, lt=1)
    batch_norm: bool


class Parent(_Model):
    """The published model a warm start continued (`train --warm-start`)."""

    name: str = Field(min_length=1)
    version: PositiveInt
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of its model.onnx")


class TrainingConfig(_Model):
    """How the model was trained (training.trainer.TrainConfig and the start it came from)."""

    task: Task
    epochs: PositiveInt
    batch_size: PositiveInt
    lr: float = Field(gt=0)
    optimizer: Literal["adam", "adagrad"]
    l2_attention: float = Field(ge=0)
    attention_lr: float | None = Field(default=None, gt=0)
    weight_decay: float = Field(ge=0)
    patience: PositiveInt
    lr_decay: float = Field(gt=0, le=1)
    lr_decay_patience: PositiveInt
    seed: NonNegativeInt
    device: str
    label_range: tuple[float, float]
    batch_norm: bool = Field(description="FM trained with batch norm, folded into v, p and w0")
    fm_start: Literal["exact", "authors"] | None = Field(
        default=None, description="how an AFM started from an FM bundle took its weights"
    )
    init_from: str | None = Field(default=None, description="the bundle this model started from")
    parent: Parent | None = Field(
        default=None, description="the model this one continues on new rows (--warm-start)"
    )
    sparse_embeddings: bool = Field(
        default=False,
        description="the embedding and linear tables trained with sparse gradients (SparseAdam,"
        " or Adagrad's sparse update): a step touches only the rows its batch uses",
    )


class Metrics(_Model):
    """Metrics of the published weights (the best validation epoch) on validation and test."""

    validation: dict[str, float]
    test: dict[str, float]


class SplitRows(_Model):
    train: NonNegativeInt
    validation: NonNegativeInt
    test: NonNegativeInt


class SplitInfo(_Model):
    """How the rows were split into training, validation and test."""

    method: Literal["random", "by_column", "files"] = Field(
        description="random: seeded shuffle; by_column: ordered by `column`, the last rows"
        " tested; files: the data came split"
    )
    fractions: tuple[float, float, float] | None = Field(
        default=None, description="train, validation, test shares (random, by_column)"
    )
    column: str | None = Field(default=None, description="by_column: the column that orders rows")
    seed: NonNegativeInt | None = Field(default=None, description="random: the shuffle's seed")


class StreamInfo(_Model):
    """How rows were read when trained with --stream (training.data.stream)."""

    files: PositiveInt
    read_rows: PositiveInt = Field(description="rows per record batch read")
    shuffle_rows: PositiveInt = Field(description="rows of the training shuffle buffer")
    vocabulary_seconds: float = Field(ge=0, description="the one pass that fitted the fields")
    split: str = Field(
        description="how a row's split was drawn: from a hash of (seed, file name, row number),"
        " not the in-memory path's permutation of the same seed"
    )


class DataInfo(_Model):
    """The data that trained the model."""

    dataset: str
    fingerprint: str = Field(description="sha256 of the training data and how it was split")
    rows: SplitRows
    split: SplitInfo | None = None
    label: str | None = Field(default=None, description="the label column of the data")
    positive_label: str | None = Field(
        default=None, description="ctr: the label value read as a click (1), when not 0/1"
    )
    stream: StreamInfo | None = Field(
        default=None, description="read as a stream of record batches (train --stream)"
    )


class PairAttention(_Model):
    """Mean attention of one field pair over the validation split."""

    fields: tuple[str, str]
    mean_attention: float


class Artifacts(_Model):
    """Plots beside the graph, as file names in the bundle folder."""

    learning_curve: str | None = None
    attention_heatmap: str | None = None


class TuningTrial(_Model):
    """One trial of `tune`: the settings it trained with and how it ended."""

    number: NonNegativeInt
    state: Literal["complete", "pruned", "failed"] = Field(
        description="complete: trained to its epoch cap or patience; pruned: stopped by the"
        " pruner; failed: training raised (a diverged run's scores are not numbers)"
    )
    params: dict[str, int | float] = Field(description="the searched settings, as train's options")
    value: float | None = Field(
        default=None,
        description="its best validation metric over the epochs it ran (none when it failed)",
    )
    epochs: NonNegativeInt = Field(description="epochs it ran")
    seconds: float = Field(ge=0)

    @model_validator(mode="after")
    def _valued(self) -> Self:
        if (self.value is None) != (self.state == "failed"):
            raise ValueError(f"trial {self.number}: a value goes with a complete or pruned trial")
        return self


class Tuning(_Model):
    """The search `tune` ran (Optuna): every trial, the one published and the bar it had to meet."""

    metric: str = Field(description="the validation metric searched on, e.g. auc or rmse")
    direction: Literal["maximize", "minimize"]
    sampler: str = Field(description="the sampler and its settings, e.g. TPESampler(seed=0, ...)")
    pruner: str
    budget_trials: PositiveInt | None = Field(default=None, description="--trials")
    budget_seconds: float | None = Field(default=None, gt=0, description="--timeout")
    seconds: float = Field(ge=0, description="the search's wall time")
    trials: list[TuningTrial] = Field(min_length=1, description="every trial run, in order")
    defaults_trial: NonNegativeInt = Field(
        description="the trial run with the settings as given (train's), enqueued first"
    )
    best_trial: NonNegativeInt = Field(
        description="the published model's trial: the best validation metric of a complete trial"
    )

    @model_validator(mode="after")
    def _trials_named(self) -> Self:
        states = {t.number: t.state for t in self.trials}
        if len(states) != len(self.trials):
            raise ValueError("trial numbers repeat")
        for key in ("defaults_trial", "best_trial"):
            if getattr(self, key) not in states:
                raise ValueError(f"{key} {getattr(self, key)} is not among the trials")
        if states[self.best_trial] != "complete":
            raise ValueError(f"best_trial {self.best_trial} did not complete")
        values = [t.value for t in self.trials if t.state == "complete" and t.value is not None]
        best = max(values) if self.direction == "maximize" else min(values)
        if next(t.value for t in self.trials if t.number == self.best_trial) != best:
            raise ValueError(f"best_trial {self.best_trial} is not the best complete trial")
        return self


class Manifest(_Model):
    """Everything bundle.json holds; what the service needs is required, the rest describes."""

    format_version: Literal[1]
    name: str = Field(min_length=1, pattern=r"^[^/\\]+$")
    version: PositiveInt
    created: str = Field(description="ISO 8601 time of publication, UTC")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of model.onnx")
    task: Task
    model: Literal["afm", "fm"]
    link: Link
    label_range: tuple[float, float]
    num_features: PositiveInt = Field(description="rows of the embedding table")
    fields: list[FittedField] = Field(min_length=1, description="in model order")
    pairs: list[tuple[str, str]] = Field(description="field pairs (i < j), row-major")
    io: IOSignature
    opset: PositiveInt
    bias: float = Field(description="w0")
    network: NetworkConfig | None = Field(default=None, alias="model_config")
    training_config: TrainingConfig | None = None
    global_attention: list[PairAttention] | None = None
    metrics: Metrics | None = None
    data: DataInfo | None = None
    history: list[dict[str, int | float]] | None = Field(
        default=None, description="per epoch: epoch, train_loss, lr, valid_<metric>"
    )
    best_epoch: NonNegativeInt | None = None
    train_rows_per_second: float | None = None
    artifacts: Artifacts | None = None
    tuning: Tuning | None = Field(default=None, description="the search that chose the settings")

    @property
    def encoder(self) -> FeatureEncoder:
        return FeatureEncoder(list(self.fields))

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"field names repeat: {names}")
        offset = 0
        for f in self.fields:
            if f.offset != offset:
                raise ValueError(f"field {f.name!r} starts at {f.offset}, not {offset}")
            offset += f.size
        if self.num_features != offset:
            raise ValueError(f"num_features is {self.num_features}, the fields fill {offset}")
        if [list(p) for p in self.pairs] != [list(p) for p in itertools.combinations(names, 2)]:
            raise ValueError("pairs are not the field pairs (i < j) in row-major order")
        if self.io != io_signature(len(names), len(self.pairs)):
            raise ValueError("io: the declared I/O does not match the fields and pairs")
        if (self.task == "ctr") != (self.link.kind == "sigmoid"):
            raise ValueError(f"link {self.link.kind!r} does not go with task {self.task!r}")
        if self.global_attention is not None and len(self.global_attention) != len(self.pairs):
            raise ValueError("global_attention needs one entry per pair")
        return self

    def to_json_dict(self) -> dict[str, Any]:
        """The manifest as bundle.json holds it (unset optional keys left out)."""
        return self.model_dump(by_alias=True, exclude_none=True)


def problems(error: ValidationError, most: int = 3) -> str:
    """The first errors of a manifest, each with the key path it concerns."""
    found = error.errors(include_url=False)
    shown = []
    for e in found[:most]:
        message = e["msg"].removeprefix("Value error, ")
        where = ".".join(str(part) for part in e["loc"])
        shown.append(f"{where}: {message}" if where else message)
    more = f" (and {len(found) - most} more)" if len(found) > most else ""
    return "; ".join(shown) + more
