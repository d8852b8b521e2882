"""Feature spec and fitted vocabularies: raw field values -> (feature_index, feature_value).

Torch-free on purpose: training writes this encoding into the bundle and the service reads it back,
so both sides encode a row with the very same code.

Global index layout: every field owns a contiguous block of the one embedding table. A categorical
field's block starts with its OOV slot (unseen, rare and missing values) followed by its vocabulary,
ordered by training-set frequency (ties by first appearance, so two readers of the same rows agree).
A numeric field owns one slot whose x_i is the standardised value, as in the paper's real-valued x.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

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
            if kind not in ("categorical", "numeric"):
                raise ValueError(f"field {name!r}: unknown kind {kind!r}")
            min_count = int(rest[1]) if len(rest) > 1 else 1
            fields.append(FieldSpec(name, kind, min_count))  # type: ignore[arg-type]
        if not fields:
            raise ValueError("a feature spec needs at least one field")
        return cls(tuple(fields), label)


@dataclass
class FittedField:
    """A field with what was learnt from the training split."""

    name: str
    kind: FieldKind
    offset: int  # first global index of the field's block; the OOV slot for categoricals
    vocabulary: dict[str, int] = field(default_factory=dict)  # value -> global index
    mean: float = 0.0
    std: float = 1.0

    @property
    def size(self) -> int:
        return 1 + len(self.vocabulary) if self.kind == "categorical" else 1

    @property
    def oov_index(self) -> int:
        return self.offset

    def examples(self, n: int = 3) -> list[str]:
        return list(self.vocabulary)[:n] if self.kind == "categorical" else [f"{self.mean:.3g}"]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "offset": self.offset}
        if self.kind == "categorical":
            out["oov_index"] = self.oov_index
            out["vocabulary"] = self.vocabulary
        else:
            out["mean"], out["std"] = self.mean, self.std
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FittedField:
        return cls(
            name=data["name"],
            kind=data["kind"],
            offset=int(data["offset"]),
            vocabulary={str(k): int(v) for k, v in data.get("vocabulary", {}).items()},
            mean=float(data.get("mean", 0.0)),
            std=float(data.get("std", 1.0)),
        )


@dataclass
class Encoded:
    """Model inputs for N rows of F fields, and how many values per field fell back to OOV."""

    index: np.ndarray  # (N, F) int64, global indices
    value: np.ndarray  # (N, F) float32, x_i
    unseen: dict[str, int]


@dataclass
class FeatureEncoder:
    """The fitted vocabularies of every field, in model order."""

    fields: list[FittedField]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def num_features(self) -> int:
        return sum(f.size for f in self.fields)

    def field(self, name: str) -> FittedField:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    @classmethod
    def fit(cls, spec: FeatureSpec, columns: Mapping[str, np.ndarray]) -> FeatureEncoder:
        """Fit vocabularies and numeric statistics on the training split only."""
        fitted, offset = [], 0
        for fs in spec.fields:
            column = columns[fs.name]
            if fs.kind == "categorical":
                vocab = _fit_vocabulary(np.asarray(column, dtype=str), fs.min_count)
                ff = FittedField(
                    fs.name, "categorical", offset, {v: offset + 1 + i for i, v in enumerate(vocab)}
                )
            else:
                values = np.asarray(column, dtype=np.float64)
                values = values[np.isfinite(values)]
                std = float(values.std()) if values.size else 1.0
                mean = float(values.mean()) if values.size else 0.0
                ff = FittedField(fs.name, "numeric", offset, mean=mean, std=std if std > 0 else 1.0)
            fitted.append(ff)
            offset += ff.size
        return cls(fitted)

    def encode(self, columns: Mapping[str, Sequence[Any] | np.ndarray]) -> Encoded:
        """Encode columns (one array of raw values per field) into index and value arrays."""
        n = len(columns[self.fields[0].name])
        index = np.empty((n, len(self.fields)), dtype=np.int64)
        value = np.ones((n, len(self.fields)), dtype=np.float32)
        unseen: dict[str, int] = {}
        for j, f in enumerate(self.fields):
            if f.kind == "categorical":
                index[:, j], unseen[f.name] = _lookup(f, columns[f.name])
            else:
                raw = np.asarray(columns[f.name], dtype=np.float64)
                standardised = (raw - f.mean) / f.std
                index[:, j] = f.offset
                value[:, j] = np.where(np.isfinite(standardised), standardised, 0.0)
        return Encoded(index, value, unseen)

    def to_dict(self) -> dict[str, Any]:
        return {"fields": [f.to_dict() for f in self.fields]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureEncoder:
        return cls([FittedField.from_dict(f) for f in data["fields"]])


def _fit_vocabulary(values: np.ndarray, min_count: int) -> list[str]:
    uniques, first, counts = np.unique(values, return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))  # most frequent first, ties by first appearance
    keep = [i for i in order if counts[i] >= min_count and uniques[i] != MISSING]
    return [str(uniques[i]) for i in keep]


def _lookup(f: FittedField, column: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, int]:
    values = np.asarray(column, dtype=str)
    if len(values) > SMALL_COLUMN:
        # Map each distinct value once: a long column holds far fewer distinct values than rows.
        uniques, inverse = np.unique(values, return_inverse=True)
        values, expand = uniques, inverse.reshape(-1)
    else:
        expand = None  # a request's few values: direct lookups beat sorting strings
    mapped = np.fromiter(
        (f.vocabulary.get(v, f.oov_index) for v in values.tolist()), np.int64, len(values)
    )
    unseen_values = (mapped == f.oov_index) & (values != MISSING)
    if expand is None:
        return mapped, int(np.count_nonzero(unseen_values))
    return mapped[expand], int(np.count_nonzero(unseen_values[expand]))
