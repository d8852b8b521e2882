"""Feature spec and fitted fields: raw field values -> (feature_index, feature_value).

Training fits the fields and writes them into bundle.json; the service reads them back; both
encode a row with this very code.

Global index layout: every field owns a contiguous block of the one embedding table. A categorical
field's block starts with its OOV slot (unseen, rare and missing values) followed by its vocabulary,
ordered by training-set frequency (ties by first appearance, so two readers of the same rows agree).
A numeric field owns one slot whose x_i is the standardised value, as in the paper's real-valued x:
the value (its log1p under `transform: log1p`, negatives taken as 0) is first clipped to the
training range [min, max], so x_i is always finite. A bucket field owns one slot per quantile bucket
learnt in training after a slot for missing values (x_i = 1), and behaves as a categorical field.
A hashed field owns `buckets` slots and needs no vocabulary: a value's slot is xxh64 (seed 0) of
its UTF-8 bytes modulo `buckets`, so every value has a slot and none is unknown; an integer id is
hashed by its decimal text, so 42 and "42" share a slot, and a missing value is the empty text.
Values that clipping changed are counted per field (`Encoded.clipped`) as unseen categorical values
are (`Encoded.unseen`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

import numpy as np
import xxhash
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator

FieldKind = Literal["categorical", "numeric", "log", "bucket", "hash"]
TEXT_KINDS = ("categorical", "hash")  # read as text; every other kind is read as numbers
Transform = Literal["none", "log1p"]
DEFAULT_BUCKETS = 10  # `name:bucket` without a count
# Every standardised value is clipped to this many standard deviations, the one bound of a numeric
# field without a training range (min, max): far beyond any training value, and small enough that
# the graph's products stay finite in float32.
STANDARDISED_LIMIT = 1e6
SMALL_COLUMN = 4096  # up to this many rows, look values up one by one
MISSING = ""  # readers map nulls of categorical columns to this; it is never a vocabulary entry
HASH_SEED = 0  # xxh64's seed for hashed fields: part of the bundle contract, never changed
HASH_EXAMPLES = 3  # the most frequent training values a hashed field keeps, as examples


@dataclass(frozen=True)
class FieldSpec:
    """One declared input field."""

    name: str
    kind: FieldKind = "categorical"
    min_count: int = 1  # categorical values seen fewer times in training share the OOV slot
    buckets: int = DEFAULT_BUCKETS  # bucket: quantile buckets; hash: slots values hash into

    @property
    def numeric(self) -> bool:
        """Read as numbers (numeric, log and bucket fields), not as text."""
        return self.kind not in TEXT_KINDS


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
        """Parse `user:hash:100000,item,age:numeric,price:log,hour:bucket:4,city:categorical:5`:
        name[:categorical[:min_count]], name:numeric, name:log, name:bucket[:buckets] or
        name:hash:buckets."""
        fields = []
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, *rest = item.split(":")
            kind = rest[0] if rest else "categorical"
            count = int(rest[1]) if len(rest) > 1 else None
            if kind == "categorical":
                fields.append(FieldSpec(name, "categorical", count or 1))
            elif kind in ("numeric", "log"):
                fields.append(FieldSpec(name, "numeric" if kind == "numeric" else "log"))
            elif kind == "bucket":
                if count is not None and count < 2:
                    raise ValueError(f"field {name!r}: a bucket field needs at least 2 buckets")
                fields.append(FieldSpec(name, "bucket", buckets=count or DEFAULT_BUCKETS))
            elif kind == "hash":
                if count is None or count < 1:
                    raise ValueError(f"field {name!r}: a hashed field needs its buckets, >= 1")
                fields.append(FieldSpec(name, "hash", buckets=count))
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
    """A numeric field: one slot whose x_i is (clip(t(value), min, max) - mean) / std, with t the
    field's transform (log1p of the value with negatives taken as 0, or none)."""

    name: str = Field(min_length=1)
    kind: Literal["numeric"]
    offset: NonNegativeInt
    transform: Transform = Field(
        default="none", description="log1p: x comes from log1p(max(value, 0)); none: the value"
    )
    mean: float = Field(allow_inf_nan=False, description="of the transformed training values")
    std: float = Field(gt=0, allow_inf_nan=False, description="of the transformed training values")
    min: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="the smallest transformed training value: smaller values are clipped to it"
        " (and counted); without min and max the standardised value is clipped to"
        f" ±{STANDARDISED_LIMIT:g}",
    )
    max: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="the largest transformed training value: larger values are clipped to it",
    )

    @property
    def size(self) -> int:
        return 1

    def examples(self, n: int = 3) -> list[str]:
        return [f"{self.typical:.3g}"]

    @property
    def typical(self) -> float:
        """A raw value that encodes near the training mean."""
        return math.expm1(self.mean) if self.transform == "log1p" else self.mean

    def representatives(self) -> list[float]:
        """Raw values that encode to the training mean, min and max (where the bundle has them)."""
        ends = [] if self.min is None or self.max is None else [self.min, self.max]
        values = [self.mean, *ends]
        return [math.expm1(v) for v in values] if self.transform == "log1p" else values

    @model_validator(mode="after")
    def _range(self) -> Self:
        if (self.min is None) != (self.max is None):
            raise ValueError("min and max go together: give both or neither")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        if self.transform == "log1p" and self.min is not None and self.min < 0:
            raise ValueError(f"min {self.min} is below 0, where log1p(max(value, 0)) never is")
        return self

    def encode_values(self, column: Any) -> tuple[np.ndarray, int]:
        """x_i of each raw value (float32, finite) and how many values clipping changed."""
        raw = np.asarray(column, dtype=np.float64)
        missing = np.isnan(raw)
        clipped = np.zeros(raw.shape, dtype=bool)
        with np.errstate(invalid="ignore", over="ignore"):
            if self.transform == "log1p":
                clipped |= raw < 0
                raw = np.log1p(np.maximum(raw, 0.0))
            if self.min is not None and self.max is not None:
                clipped |= (raw < self.min) | (raw > self.max)
                raw = np.clip(raw, self.min, self.max)
            standardised = (raw - self.mean) / self.std
            clipped |= np.abs(standardised) > STANDARDISED_LIMIT
        x = np.clip(standardised, -STANDARDISED_LIMIT, STANDARDISED_LIMIT)
        x[missing] = 0.0  # a missing value enters as the mean; it is not clipped
        return x.astype(np.float32), int(np.count_nonzero(clipped & ~missing))

    @classmethod
    def fitted(cls, name: str, offset: int, column: Any, transform: Transform) -> NumericField:
        values = np.asarray(column, dtype=np.float64)
        values = values[np.isfinite(values)]
        if transform == "log1p":
            values = np.log1p(np.maximum(values, 0.0))
        if not values.size:
            return cls(name=name, kind="numeric", offset=offset, transform=transform, mean=0.0,
                       std=1.0)  # fmt: skip
        with np.errstate(over="ignore", invalid="ignore"):
            mean, std = float(values.mean()), float(values.std())
        low, high = float(values.min()), float(values.max())
        return cls(
            name=name,
            kind="numeric",
            offset=offset,
            transform=transform,
            mean=mean if math.isfinite(mean) else low / 2 + high / 2,
            std=std if std > 0 and math.isfinite(std) else 1.0,
            min=low,
            max=high,
        )


class BucketField(_FieldModel):
    """A number placed in a quantile bucket learnt in training: the block holds a slot for missing
    values (offset) and one slot per bucket after it; bucket b holds cuts[b-1] <= value < cuts[b]
    (the first bucket everything below cuts[0], the last everything from cuts[-1] up)."""

    name: str = Field(min_length=1)
    kind: Literal["bucket"]
    offset: NonNegativeInt = Field(description="first global index of the block: missing values")
    cuts: list[Annotated[float, Field(allow_inf_nan=False)]] = Field(
        description="strictly increasing cut points between buckets: len(cuts) + 1 buckets"
    )
    min: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="the smallest training value: smaller values (first bucket) are counted",
    )
    max: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="the largest training value: larger values (last bucket) are counted",
    )

    @property
    def size(self) -> int:
        return len(self.cuts) + 2

    @property
    def buckets(self) -> int:
        return len(self.cuts) + 1

    def examples(self, n: int = 3) -> list[str]:
        return [f"{v:.3g}" for v in self.representatives()[:n]]

    def representatives(self) -> list[float]:
        """One raw value in each bucket, in bucket order."""
        if not self.cuts:
            return [self.min if self.min is not None else 0.0]
        below = self.min if self.min is not None and self.min < self.cuts[0] else self.cuts[0] - 1
        return [below, *self.cuts]

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if any(b <= a for a, b in itertools.pairwise(self.cuts)):
            raise ValueError(f"cuts must be strictly increasing, got {self.cuts}")
        if (self.min is None) != (self.max is None):
            raise ValueError("min and max go together: give both or neither")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self

    def encode_values(self, column: Any) -> tuple[np.ndarray, int]:
        """The global index of each raw value and how many lay outside the training range."""
        raw = np.asarray(column, dtype=np.float64)
        missing = np.isnan(raw)
        index = self.offset + 1 + np.searchsorted(np.asarray(self.cuts), raw, side="right")
        index[missing] = self.offset
        outside = 0
        if self.min is not None and self.max is not None:
            outside = int(np.count_nonzero((raw < self.min) | (raw > self.max)))
        return index.astype(np.int64), outside

    @classmethod
    def fitted(cls, name: str, offset: int, column: Any, buckets: int) -> BucketField:
        values = np.asarray(column, dtype=np.float64)
        values = values[np.isfinite(values)]
        if not values.size:
            return cls(name=name, kind="bucket", offset=offset, cuts=[])
        quantiles = np.quantile(values, np.linspace(0, 1, buckets + 1)[1:-1])
        cuts = np.unique(quantiles)  # duplicate cuts (a value repeated across quantiles) collapse
        return cls(
            name=name,
            kind="bucket",
            offset=offset,
            cuts=cuts.tolist(),
            min=float(values.min()),
            max=float(values.max()),
        )


class HashedField(_FieldModel):
    """A text or integer id hashed into the field's block of `buckets` slots: a value's global
    index is offset + xxh64(its UTF-8 text, seed 0) % buckets, an integer's text being its decimal
    digits and a missing value's the empty text. No vocabulary: every value has a slot, so none is
    unseen, and values that share a slot share its weights."""

    name: str = Field(min_length=1)
    kind: Literal["hash"]
    offset: NonNegativeInt = Field(description="first global index of the block")
    buckets: PositiveInt = Field(description="slots of the block, the modulus of the hash")
    hash: Literal["xxh64"] = Field(
        default="xxh64",
        description="xxh64 (xxHash, seed 0) of the value's UTF-8 text; an integer is hashed by its"
        ' decimal text, so 42 and "42" agree',
    )
    common_values: list[str] = Field(
        default_factory=list,
        description=f"up to {HASH_EXAMPLES} of the most frequent training values, as examples",
    )

    @property
    def size(self) -> int:
        return self.buckets

    def examples(self, n: int = 3) -> list[str]:
        return self.common_values[:n]

    def encode_values(self, column: Any) -> np.ndarray:
        """The global index of each raw value (text or integers)."""
        values = np.asarray(column, dtype=str)
        expand: np.ndarray | None = None
        if len(values) > SMALL_COLUMN:
            # Hash each distinct value once: a long column holds far fewer distinct values than rows.
            uniques, inverse = np.unique(values, return_inverse=True)
            values, expand = uniques, inverse.reshape(-1)
        slots = np.fromiter(
            (hash_slot(v, self.buckets) for v in values.tolist()), np.int64, len(values)
        )
        index = self.offset + slots
        return index if expand is None else index[expand]

    @classmethod
    def fitted(cls, name: str, offset: int, column: Any, buckets: int) -> HashedField:
        common = _fit_vocabulary(np.asarray(column, dtype=str), 1)[:HASH_EXAMPLES]
        return cls(name=name, kind="hash", offset=offset, buckets=buckets, common_values=common)


def hash_slot(value: str | int, buckets: int) -> int:
    """The slot (0 <= slot < buckets) of a hashed field's raw value within its block: xxh64 with
    seed 0 of the value's UTF-8 text modulo `buckets`; an integer is hashed by its decimal text."""
    text = value if isinstance(value, str) else str(int(value))
    return xxhash.xxh64_intdigest(text.encode("utf-8"), HASH_SEED) % buckets


AnyField = CategoricalField | NumericField | BucketField | HashedField
FittedField = Annotated[AnyField, Field(discriminator="kind")]


@dataclass
class Encoded:
    """Model inputs for N rows of F fields; per categorical field how many values fell back to
    OOV, per numeric and bucket field how many lay outside the training range (clipped); hashed
    fields are in neither (no value of theirs is unseen or clipped)."""

    index: np.ndarray  # (N, F) int64, global indices
    value: np.ndarray  # (N, F) float32, x_i, always finite
    unseen: dict[str, int]
    clipped: dict[str, int]


@dataclass
class FeatureEncoder:
    """The fitted fields, in model order."""

    fields: list[AnyField]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def num_features(self) -> int:
        return sum(f.size for f in self.fields)

    def field(self, name: str) -> AnyField:
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

    def bucket(self, name: str) -> BucketField:
        """The named field, which must be a bucket field."""
        f = self.field(name)
        if not isinstance(f, BucketField):
            raise TypeError(f"field {name!r} is {f.kind}, not bucket")
        return f

    @classmethod
    def fit(cls, spec: FeatureSpec, columns: Mapping[str, Any]) -> FeatureEncoder:
        """Fit vocabularies, numeric statistics, buckets and hashed fields' examples on the
        training split only."""
        fitted: list[AnyField] = []
        offset = 0
        for fs in spec.fields:
            column = columns[fs.name]
            ff: AnyField
            if fs.kind == "categorical":
                vocabulary = _fit_vocabulary(np.asarray(column, dtype=str), fs.min_count)
                ff = CategoricalField.fitted(fs.name, offset, vocabulary)
            elif fs.kind == "bucket":
                ff = BucketField.fitted(fs.name, offset, column, fs.buckets)
            elif fs.kind == "hash":
                ff = HashedField.fitted(fs.name, offset, column, fs.buckets)
            else:
                transform: Transform = "log1p" if fs.kind == "log" else "none"
                ff = NumericField.fitted(fs.name, offset, column, transform)
            fitted.append(ff)
            offset += ff.size
        return cls(fitted)

    def encode(self, columns: Mapping[str, Any]) -> Encoded:
        """Encode columns (one array of raw values per field) into index and value arrays."""
        n = len(columns[self.fields[0].name])
        index = np.empty((n, len(self.fields)), dtype=np.int64)
        value = np.ones((n, len(self.fields)), dtype=np.float32)
        unseen: dict[str, int] = {}
        clipped: dict[str, int] = {}
        for j, f in enumerate(self.fields):
            if isinstance(f, CategoricalField):
                index[:, j], unseen[f.name] = _lookup(f, columns[f.name])
            elif isinstance(f, BucketField):
                index[:, j], clipped[f.name] = f.encode_values(columns[f.name])
            elif isinstance(f, HashedField):
                index[:, j] = f.encode_values(columns[f.name])
            else:
                index[:, j] = f.offset
                value[:, j], clipped[f.name] = f.encode_values(columns[f.name])
        return Encoded(index, value, unseen, clipped)


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


def spec_item(field: AnyField) -> str:
    """The `--fields` item that reads a fitted field's column as training read it: `name:kind`,
    and a hashed field's buckets after it."""
    if isinstance(field, HashedField):
        return f"{field.name}:hash:{field.buckets}"
    return f"{field.name}:{field.kind}"
