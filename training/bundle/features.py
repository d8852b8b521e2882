"""Feature spec and fitted fields: raw field values -> (feature_index, feature_value).

Training fits the fields and writes them into bundle.json; the service reads them back; both
encode a row with this very code.

Global index layout: every field owns a contiguous block of the one embedding table. A categorical
field's block starts with its OOV slot (unseen, rare and missing values) followed by its vocabulary,
ordered by training-set frequency (ties by first appearance, so two readers of the same rows agree).
A numeric field owns one slot whose x_i is the standardised value, as in the paper's real-valued x.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, model_validator

FieldKind = Literal["categorical", "numeric"]
SMALL_COLUMN = 4096  # up to this many rows, look values up one by one
MISSING = ""  # readers map nulls of categorical columns to this; it is never a vocabulary entry


@dataclass(frozen=True)
class FieldSpec:
    """One declared input field."""

    name: str
    kind: FieldKind = "categorical"
    min_count: int = 1  # categorical values seen fewer times in training share the OOV slot


@dataclass(frozen=True)
class FeatureSpec:
    """The declared fields of a data set, in model order, and its label column."""

    fields: tuple[FieldSpec, ...]
    label: str = "label"

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    @classmethod
    def parse(cls, text: str, label: str = "label") -> FeatureSpec:
        """Parse `user,item,age:numeric,city:categorical:5` (name[:kind[:min_count]])."""
        fields = []
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, *rest = item.split(":")
            kind = rest[0] if rest else "categorical"
            if kind == "categorical":
                fields.append(FieldSpec(name, "categorical", int(rest[1]) if len(rest) > 1 else 1))
            elif kind == "numeric":
                fields.append(FieldSpec(name, "numeric"))
            else:
                raise ValueError(f"field {name!r}: unknown kind {kind!r}")
        if not fields:
            raise ValueError("a feature spec needs at least one field")
        return cls(tuple(fields), label)


class _FieldModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CategoricalField(_FieldModel):
    """A categorical field fitted on the training split: its block and its vocabulary."""

    name: str = Field(min_length=1)
    kind: Literal["categorical"]
    offset: NonNegativeInt = Field(description="first global index of the block: the OOV slot")
    oov_index: NonNegativeInt = Field(description="equal to offset")
    vocabulary: dict[str, int] = Field(
        description="value -> global index: offset + 1, offset + 2, ... in frequency order"
    )

    @property
    def size(self) -> int:
        return 1 + len(self.vocabulary)

    def examples(self, n: int = 3) -> list[str]:
        return list(self.vocabulary)[:n]

    @model_validator(mode="after")
    def _indices_fill_the_block(self) -> Self:
        if self.oov_index != self.offset:
            raise ValueError(f"oov_index {self.oov_index} is not the offset {self.offset}")
        indices = np.fromiter(self.vocabulary.values(), np.int64, len(self.vocabulary))
        expected = np.arange(self.offset + 1, self.offset + self.size, dtype=np.int64)
        if not np.array_equal(np.sort(indices), expected):
            raise ValueError(
                f"vocabulary indices must be {self.offset + 1}..{self.offset + self.size - 1},"
                " each once (the field's block after its OOV slot)"
            )
        return self

    @classmethod
    def fitted(cls, name: str, offset: int, values: Sequence[str]) -> CategoricalField:
        vocabulary = {v: offset + 1 + i for i, v in enumerate(values)}
        return cls.model_construct(
            name=name, kind="categorical", offset=offset, oov_index=offset, vocabulary=vocabulary
        )


class NumericField(_FieldModel):
    """A numeric field: one slot whose x_i is (value - mean) / std."""

    name: str = Field(min_length=1)
    kind: Literal["numeric"]
    offset: NonNegativeInt
    mean: float = Field(allow_inf_nan=False)
    std: float = Field(gt=0, allow_inf_nan=False)

    @property
    def size(self) -> int:
        return 1

    def examples(self, n: int = 3) -> list[str]:
        return [f"{self.mean:.3g}"]


FittedField = Annotated[CategoricalField | NumericField, Field(discriminator="kind")]


@dataclass
class Encoded:
    """Model inputs for N rows of F fields, and how many values per field fell back to OOV."""

    index: np.ndarray  # (N, F) int64, global indices
    value: np.ndarray  # (N, F) float32, x_i
    unseen: dict[str, int]


@dataclass
class FeatureEncoder:
    """The fitted fields, in model order."""

    fields: list[CategoricalField | NumericField]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def num_features(self) -> int:
        return sum(f.size for f in self.fields)

    def field(self, name: str) -> CategoricalField | NumericField:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def categorical(self, name: str) -> CategoricalField:
        """The named field, which must be categorical."""
        f = self.field(name)
        if not isinstance(f, CategoricalField):
            raise TypeError(f"field {name!r} is {f.kind}, not categorical")
        return f

    def numeric(self, name: str) -> NumericField:
        """The named field, which must be numeric."""
        f = self.field(name)
        if not isinstance(f, NumericField):
            raise TypeError(f"field {name!r} is {f.kind}, not numeric")
        return f

    @classmethod
    def fit(cls, spec: FeatureSpec, columns: Mapping[str, Any]) -> FeatureEncoder:
        """Fit vocabularies and numeric statistics on the training split only."""
        fitted: list[CategoricalField | NumericField] = []
        offset = 0
        for fs in spec.fields:
            column = columns[fs.name]
            ff: CategoricalField | NumericField
            if fs.kind == "categorical":
                vocabulary = _fit_vocabulary(np.asarray(column, dtype=str), fs.min_count)
                ff = CategoricalField.fitted(fs.name, offset, vocabulary)
            else:
                values = np.asarray(column, dtype=np.float64)
                values = values[np.isfinite(values)]
                mean = float(values.mean()) if values.size else 0.0
                std = float(values.std()) if values.size else 1.0
                std = std if std > 0 and math.isfinite(std) else 1.0
                ff = NumericField(name=fs.name, kind="numeric", offset=offset, mean=mean, std=std)
            fitted.append(ff)
            offset += ff.size
        return cls(fitted)

    def encode(self, columns: Mapping[str, Any]) -> Encoded:
        """Encode columns (one array of raw values per field) into index and value arrays."""
        n = len(columns[self.fields[0].name])
        index = np.empty((n, len(self.fields)), dtype=np.int64)
        value = np.ones((n, len(self.fields)), dtype=np.float32)
        unseen: dict[str, int] = {}
        for j, f in enumerate(self.fields):
            if isinstance(f, CategoricalField):
                index[:, j], unseen[f.name] = _lookup(f, columns[f.name])
            else:
                raw = np.asarray(columns[f.name], dtype=np.float64)
                standardised = (raw - f.mean) / f.std
                index[:, j] = f.offset
                value[:, j] = np.where(np.isfinite(standardised), standardised, 0.0)
        return Encoded(index, value, unseen)


def _fit_vocabulary(values: np.ndarray, min_count: int) -> list[str]:
    uniques, first, counts = np.unique(values, return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))  # most frequent first, ties by first appearance
    keep = [i for i in order if counts[i] >= min_count and uniques[i] != MISSING]
    return [str(uniques[i]) for i in keep]


def _lookup(f: CategoricalField, column: Any) -> tuple[np.ndarray, int]:
    values = np.asarray(column, dtype=str)
    expand: np.ndarray | None = None
    if len(values) > SMALL_COLUMN:
        # Map each distinct value once: a long column holds far fewer distinct values than rows.
        uniques, inverse = np.unique(values, return_inverse=True)
        values, expand = uniques, inverse.reshape(-1)
    mapped = np.fromiter(
        (f.vocabulary.get(v, f.oov_index) for v in values.tolist()), np.int64, len(values)
    )
    unseen_values = (mapped == f.oov_index) & (values != MISSING)
    if expand is None:
        return mapped, int(np.count_nonzero(unseen_values))
    return mapped[expand], int(np.count_nonzero(unseen_values[expand]))
