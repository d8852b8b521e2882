"""The onnxruntime runtime: load and verify a bundle, encode requests, predict and explain.

`ServedModel` is one loaded, warmed bundle and everything derived from it (request schemas,
sub-encoders, model card). Its bundle, session, schemas and card stay as loaded; two bounded memos
(`service.memo`) fill as requests arrive: the encoder split per set of context fields (`_splits`,
at most `split_cache_entries`) and the encoded context values of every field (`_values`, at most
`value_cache_entries` and `value_cache_bytes` together). Concurrent requests, worker threads
included, share them; an entry holds only what the bundle's encoder computes again on a miss, so a
lost or evicted one changes no answer. `ModelRuntime` holds the current model and swaps in a new one atomically on
reload, so a request keeps the model it started with.

Requests reach the runtime already validated by `service.schemas`: every row gives every field
exactly once, so encoding never refuses one.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.errors import BundleRefused, NotFound, NotReady, ServiceError, ValidationFailed
from service.memo import Memo, MemoStats
from service.metrics import ServiceMetrics
from service.schemas import PredictRequest, RequestSchemas, build_request_schemas
from service.settings import Settings, name_problem
from training import bundle as bundles
from training.bundle.features import MISSING as MISSING_VALUE
from training.bundle.features import (
    STANDARDISED_LIMIT,
    BucketField,
    CategoricalField,
    FeatureEncoder,
    HashedField,
    NumericField,
)

log = logging.getLogger("service.runtime")

SCORE = ["score"]
EXPLAIN = ["score", "raw", "attention", "pair_contribution"]
ALL = [*EXPLAIN, "linear_contribution"]
VALUE_ENTRY_BYTES = 256  # a memo entry beside its value: dict slot, key and result tuples
SPLIT_ENTRY_BYTES = 1024  # a split holds positions and references to the bundle's fields
DIGEST = re.compile(r"\b[0-9a-fA-F]{64}\b")


@dataclass(frozen=True)
class Batch:
    """Encoded rows of one request, and the raw values needed to explain them."""

    index: np.ndarray
    value: np.ndarray
    unseen: dict[str, int]
    clipped: dict[str, int]
    rows: Sequence[Mapping[str, Any]]
    context: Mapping[str, Any]

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def value_of(self, row: int, field: str) -> Any:
        values = self.rows[row]
        return values[field] if field in values else self.context[field]


@dataclass(frozen=True)
class _Split:
    context_fields: tuple[str, ...]
    context_positions: list[int]
    candidates: FeatureEncoder
    candidate_positions: list[int]


class ServedModel:
    """One verified bundle in onnxruntime, with its request models: encode, predict, explain."""

    def __init__(
        self,
        bundle: bundles.Bundle,
        session: ort.InferenceSession,
        settings: Settings,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.bundle = bundle
        self.session = session
        self.encoder = bundle.encoder
        self.metrics = metrics
        self.names = tuple(self.encoder.names)
        self.positions = {name: j for j, name in enumerate(self.names)}
        self.pairs = bundle.pairs
        self._pair_positions = np.array(
            [[self.positions[a], self.positions[b]] for a, b in self.pairs], dtype=np.int64
        ).reshape(-1, 2)
        self.bias = bundle.bias
        self.ref = {"name": bundle.name, "version": bundle.version}
        self.schemas: RequestSchemas = build_request_schemas(
            self.encoder,
            num_pairs=len(self.pairs),
            max_rows=settings.max_candidates,
            max_value_length=settings.max_value_length,
            default_top_k=settings.default_top_k,
        )
        self._splits: Memo[_Split] = Memo(
            settings.split_cache_entries, settings.split_cache_entries * SPLIT_ENTRY_BYTES
        )
        self._single = {f.name: FeatureEncoder([f]) for f in self.encoder.fields}
        self._categorical = {f.name for f in self.encoder.fields if f.kind == "categorical"}
        self._hashed = {f.name for f in self.encoder.fields if f.kind == "hash"}
        self._values: Memo[tuple[int, float, int, int]] = Memo(
            settings.value_cache_entries, settings.value_cache_bytes
        )
        self._card = self._model_card()

    @property
    def name(self) -> str:
        return self.bundle.name

    @property
    def version(self) -> int:
        return self.bundle.version

    @property
    def task(self) -> str:
        return self.bundle.task

    def card(self) -> dict[str, Any]:
        """`GET /model`: name, version, task, fields with examples, metrics, global attention,
        and the model's promotion as the models directory holds it now."""
        return {**self._card, "promotion": self._promotion()}

    def _promotion(self) -> dict[str, Any] | None:
        try:
            model_dir = self.bundle.path.parent
            promotion = bundles.promotion_of(model_dir.parent, model_dir.name)
        except bundles.BundleError as error:
            log.warning("promotion unreadable", extra={"reason": str(error)})
            return None
        return promotion.model_dump(exclude={"sha256"}, exclude_none=True) if promotion else None

    def parse_predict(self, body: bytes) -> PredictRequest:
        """Parse and validate a `/predict` body with this model's request schemas."""
        return self.schemas.parse_predict(body)

    def encode(self, request: PredictRequest) -> Batch:
        """Encode a request with the bundle's encoder; the ranking context is encoded once."""
        if not request.ranking:
            columns = {name: [row[name] for row in request.rows] for name in self.names}
            encoded = self.encoder.encode(columns)
            return Batch(
                encoded.index, encoded.value, encoded.unseen, encoded.clipped, request.rows, {}
            )
        return self._encode_ranking(request.context, request.rows)

    def encode_columns(self, columns: Mapping[str, Sequence[Any]]) -> Batch:
        """Encode rows given as columns, one sequence of raw values per field (every field, as
        many values each), with the encoder `/predict` uses for instances."""
        encoded = self.encoder.encode(columns)
        return Batch(encoded.index, encoded.value, encoded.unseen, encoded.clipped, (), {})

    def tensor_batch(self, index: np.ndarray, value: np.ndarray) -> Batch:
        """Rows given as the graph's own inputs, (N, F) int64 and float32: every index must lie
        in its field's block of the embedding table and every value be finite within
        ±STANDARDISED_LIMIT, as the encoder's always are; ValidationFailed names the tensor."""
        fields = self.encoder.fields
        low = np.array([f.offset for f in fields], dtype=np.int64)
        high = low + np.array([f.size for f in fields], dtype=np.int64)
        outside = (index < low) | (index >= high)
        if outside.any():
            row, column = (int(i) for i in np.argwhere(outside)[0])
            raise ValidationFailed(
                "an index lies outside its field's block",
                [
                    (
                        "feature_index",
                        f"[{row}, {column}] is {int(index[row, column])}; field"
                        f" {self.names[column]!r} owns {low[column]}..{high[column] - 1}",
                    )
                ],
            )
        if not (np.abs(value) <= STANDARDISED_LIMIT).all():  # NaN compares False
            raise ValidationFailed(
                "a feature value is not finite or too large",
                [("feature_value", f"every value must be finite, within ±{STANDARDISED_LIMIT:g}")],
            )
        return Batch(index, value, {}, {}, (), {})

    def run(self, batch: Batch, outputs: list[str]) -> dict[str, np.ndarray]:
        """One onnxruntime call on the batch; inference time and rows go to the metrics."""
        feeds = {"feature_index": batch.index, "feature_value": batch.value}
        start = time.perf_counter()
        results = self.session.run(outputs, feeds)
        if self.metrics is not None:
            self.metrics.observe_inference(len(batch), time.perf_counter() - start)
            self.metrics.count_unseen(batch.unseen)
            self.metrics.count_clipped(batch.clipped)
        return dict(zip(outputs, results, strict=True))

    def predict(self, request: PredictRequest) -> dict[str, Any]:
        """Scores in request order, unseen and clipped values per field, and explanations when
        asked."""
        batch = self.encode(request)
        return self.answer(request, batch, self.run(batch, self.outputs(request)))

    def outputs(self, request: PredictRequest) -> list[str]:
        """The graph outputs a `/predict` answer to the request is built from."""
        if not request.explain:
            return SCORE
        return ALL if request.focus == "candidates" else EXPLAIN

    def answer(
        self, request: PredictRequest, batch: Batch, out: Mapping[str, np.ndarray]
    ) -> dict[str, Any]:
        """The `/predict` answer from the request's encoded rows and the graph's outputs."""
        answer: dict[str, Any] = {
            "model": self.ref,
            "task": self.task,
            "scores": out["score"],
            "unknown_values": batch.unseen,
            "clipped_values": batch.clipped,
        }
        if request.explain and request.focus == "candidates":
            answer["explanations"] = self._candidate_explanations(batch, out, request.top_k)
        elif request.explain:
            answer["explanations"] = self._explanations(batch, out, request.top_k)
        return answer

    def explain(self, row: Mapping[str, Any], top_k: int | None = None) -> dict[str, Any]:
        """Score, raw, bias, linear terms and every pair sorted by |contribution|; with top_k,
        also `top_pairs`, the k first of them (as `/predict` explanations list them)."""
        encoded = self.encoder.encode({name: [row[name]] for name in self.names})
        batch = Batch(encoded.index, encoded.value, encoded.unseen, encoded.clipped, [row], {})
        out = self.run(batch, ALL)
        linear = out["linear_contribution"][0].tolist()
        pairs = self._pair_terms(batch, out, len(self.pairs))[0]
        answer = {
            "model": self.ref,
            "task": self.task,
            "score": float(out["score"][0]),
            "raw": float(out["raw"][0]),
            "bias": self.bias,
            "linear": [
                {"field": name, "value": row[name], "contribution": c}
                for name, c in zip(self.names, linear, strict=True)
            ],
            "pairs": pairs,
            "unknown_values": batch.unseen,
            "clipped_values": batch.clipped,
        }
        if top_k is not None:
            answer["top_pairs"] = pairs[:top_k]
        return answer

    def warm_up(self, sizes: Iterable[int]) -> None:
        """Score every vocabulary value of every field, then run every output set once at each
        batch size, so that a value the graph cannot score is found here and first requests pay
        no allocation."""
        sizes = sorted(set(sizes))
        for index, value in self._warm_up_rows(sizes[-1]):
            self.session.run(SCORE, {"feature_index": index, "feature_value": value})
        index, value = next(self._warm_up_rows(sizes[-1]))
        for size in sizes:
            feeds = {"feature_index": index[:size], "feature_value": value[:size]}
            for outputs in (SCORE, EXPLAIN, ALL):
                self.session.run(outputs, feeds)

    def _warm_up_rows(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Batches of `size` encoded rows that together hold every vocabulary value and the OOV
        slot of every categorical field, every bucket and the missing slot of every bucket field,
        both ends of every numeric field's range, and the missing value and training examples of
        every hashed field (each field cycles through its own values)."""
        values = {f.name: _warm_up_values(f) for f in self.encoder.fields}
        longest = max(len(column) for column in values.values())
        for start in range(0, longest, size):
            rows = np.arange(start, start + size)
            columns = {name: column[rows % len(column)] for name, column in values.items()}
            encoded = self.encoder.encode(columns)
            yield encoded.index, encoded.value

    def _encode_ranking(
        self, context: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]]
    ) -> Batch:
        split = self._split(frozenset(context))
        n = len(candidates)
        index = np.empty((n, len(self.names)), dtype=np.int64)
        value = np.empty((n, len(self.names)), dtype=np.float32)
        unseen: dict[str, int] = {}
        clipped: dict[str, int] = {}
        columns = {f.name: [c[f.name] for c in candidates] for f in split.candidates.fields}
        if split.context_positions:
            shared = [self._encode_value(name, context[name]) for name in split.context_fields]
            index[:, split.context_positions] = [i for i, _, _, _ in shared]
            value[:, split.context_positions] = [x for _, x, _, _ in shared]
            for name, (_, _, new, out) in zip(split.context_fields, shared, strict=True):
                if name in self._categorical:
                    unseen[name] = new * n
                elif name not in self._hashed:
                    clipped[name] = out * n
        if split.candidate_positions:
            each = split.candidates.encode(columns)
            index[:, split.candidate_positions] = each.index
            value[:, split.candidate_positions] = each.value
            unseen.update(each.unseen)
            clipped.update(each.clipped)
        return Batch(
            index,
            value,
            {name: unseen[name] for name in self.names if name in unseen},
            {name: clipped[name] for name in self.names if name in clipped},
            candidates,
            context,
        )

    def _encode_value(self, name: str, raw: Any) -> tuple[int, float, int, int]:
        """One value through the bundle's encoder, memoised: contexts repeat across requests.
        Its global index, x, and whether it was unseen (categorical) or clipped (numeric, bucket)."""
        key = (name, raw)
        hit = self._values.get(key)
        if hit is None:
            encoded = self._single[name].encode({name: [raw]})
            hit = (
                int(encoded.index[0, 0]),
                float(encoded.value[0, 0]),
                encoded.unseen.get(name, 0),
                encoded.clipped.get(name, 0),
            )
            self._values.put(key, hit, sys.getsizeof(raw) + VALUE_ENTRY_BYTES)
        return hit

    def _split(self, context_fields: frozenset[str]) -> _Split:
        split = self._splits.get(context_fields)
        if split is None:
            shared = [f for f in self.encoder.fields if f.name in context_fields]
            each = [f for f in self.encoder.fields if f.name not in context_fields]
            split = _Split(
                context_fields=tuple(f.name for f in shared),
                context_positions=[self.positions[f.name] for f in shared],
                candidates=FeatureEncoder(each),
                candidate_positions=[self.positions[f.name] for f in each],
            )
            self._splits.put(context_fields, split, SPLIT_ENTRY_BYTES)
        return split

    def memo_stats(self) -> dict[str, MemoStats]:
        """Lookups, entries and bytes of the memos, for `/metrics`."""
        return {"values": self._values.stats(), "splits": self._splits.stats()}

    def _explanations(
        self, batch: Batch, out: Mapping[str, np.ndarray], top_k: int
    ) -> list[dict[str, Any]]:
        raws = out["raw"].tolist()
        terms = self._pair_terms(batch, out, top_k)
        return [
            {"raw": raw, "bias": self.bias, "top_pairs": pairs}
            for raw, pairs in zip(raws, terms, strict=True)
        ]

    def _candidate_explanations(
        self, batch: Batch, out: Mapping[str, np.ndarray], top_k: int
    ) -> list[dict[str, Any]]:
        """Per candidate: the terms of its raw score grouped by what the candidates share (bias,
        the context's linear terms and pairs) and what they do not (the pairs and linear terms of
        candidate fields), and each group's difference to the best candidate (largest raw)."""
        own = np.array([name not in batch.context for name in self.names])
        involved = own[self._pair_positions].any(axis=1)
        mine = np.flatnonzero(involved)
        raw = out["raw"].astype(np.float64)
        linear = out["linear_contribution"].astype(np.float64)
        pairs = out["pair_contribution"].astype(np.float64)
        context_pairs = pairs[:, ~involved].sum(axis=1)
        candidate_pairs = pairs[:, mine]
        best = int(np.argmax(raw))
        differences = candidate_pairs - candidate_pairs[best]
        top, other = _top_and_rest(candidate_pairs, top_k)
        top_d, other_d = _top_and_rest(differences, top_k)
        linear_total = linear.sum(axis=1)
        attention = out["attention"][:, mine].tolist()
        fields = [self.pairs[p] for p in mine.tolist()]
        own_fields = [name for name, is_own in zip(self.names, own, strict=True) if is_own]
        answers = []
        for i in range(len(batch)):
            values = [(batch.value_of(i, a), batch.value_of(i, b)) for a, b in fields]
            best_values = [(batch.value_of(best, a), batch.value_of(best, b)) for a, b in fields]
            answers.append(
                {
                    "raw": float(raw[i]),
                    "bias": self.bias,
                    "context_linear": float(linear[i, ~own].sum()),
                    "linear": [
                        {"field": name, "value": batch.value_of(i, name), "contribution": c}
                        for name, c in zip(own_fields, linear[i, own].tolist(), strict=True)
                    ],
                    "context_pairs": float(context_pairs[i]),
                    "top_pairs": [
                        {
                            "fields": list(fields[p]),
                            "values": list(values[p]),
                            "attention": attention[i][p],
                            "contribution": float(candidate_pairs[i, p]),
                        }
                        for p in top[i]
                    ],
                    "other_pairs": float(other[i]),
                    "versus_best": {
                        "candidate": best,
                        "raw_difference": float(raw[i] - raw[best]),
                        "linear": float(linear_total[i] - linear_total[best]),
                        "context_pairs": float(context_pairs[i] - context_pairs[best]),
                        "top_pairs": [
                            {
                                "fields": list(fields[p]),
                                "values": list(values[p]),
                                "best_values": list(best_values[p]),
                                "difference": float(differences[i, p]),
                            }
                            for p in top_d[i]
                        ],
                        "other_pairs": float(other_d[i]),
                    },
                }
            )
        return answers

    def _pair_terms(
        self, batch: Batch, out: Mapping[str, np.ndarray], top_k: int
    ) -> list[list[dict[str, Any]]]:
        contribution, attention = out["pair_contribution"], out["attention"]
        order = np.argsort(-np.abs(contribution), axis=1, kind="stable")[:, :top_k]
        top_c = np.take_along_axis(contribution, order, axis=1).tolist()
        top_a = np.take_along_axis(attention, order, axis=1).tolist()
        rows = []
        for i, (pairs, cs, attns) in enumerate(zip(order.tolist(), top_c, top_a, strict=True)):
            terms = []
            for p, c, a in zip(pairs, cs, attns, strict=True):
                left, right = self.pairs[p]
                terms.append(
                    {
                        "fields": [left, right],
                        "values": [batch.value_of(i, left), batch.value_of(i, right)],
                        "attention": a,
                        "contribution": c,
                    }
                )
            rows.append(terms)
        return rows

    def _model_card(self) -> dict[str, Any]:
        manifest = self.bundle.manifest
        fields = [_field_card(f) for f in self.encoder.fields]
        attention = manifest.global_attention
        return {
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "link": manifest.link.model_dump(),
            "created": manifest.created,
            "fields": fields,
            "pairs": len(self.pairs),
            "metrics": manifest.metrics.model_dump() if manifest.metrics else {},
            "global_attention": [a.model_dump() for a in attention] if attention else None,
        }


def _top_and_rest(terms: np.ndarray, k: int) -> tuple[list[list[int]], np.ndarray]:
    """Per row of `terms` (rows, terms): the columns of the k largest |term|, largest first, and
    the sum of the other terms."""
    order = np.argsort(-np.abs(terms), axis=1, kind="stable")
    rest = np.take_along_axis(terms, order[:, k:], axis=1).sum(axis=1)
    return order[:, :k].tolist(), rest


def _field_card(
    field: CategoricalField | NumericField | BucketField | HashedField,
) -> dict[str, Any]:
    cardinality: int | None
    examples: list[str] | list[float]
    if isinstance(field, CategoricalField):
        cardinality, examples = len(field.vocabulary), field.examples(3)
    elif isinstance(field, HashedField):
        cardinality, examples = field.buckets, field.examples(3)
    elif isinstance(field, BucketField):
        cardinality, examples = field.buckets, [round(v, 3) for v in field.representatives()[:3]]
    else:
        cardinality, examples = None, [round(field.typical, 3)]
    return {
        "name": field.name,
        "kind": field.kind,
        "cardinality": cardinality,
        "examples": examples,
    }


def _warm_up_values(
    field: CategoricalField | NumericField | BucketField | HashedField,
) -> np.ndarray:
    if isinstance(field, CategoricalField):
        return np.array([MISSING_VALUE, *field.vocabulary], dtype=object)
    if isinstance(field, HashedField):
        return np.array([MISSING_VALUE, *field.common_values], dtype=object)
    if isinstance(field, BucketField):
        return np.array([np.nan, *field.representatives()])  # NaN: the missing slot
    return np.array(field.representatives())


class ModelRuntime:
    """Owns the served model: loads, verifies and warms bundles, and swaps them atomically.

    Error messages it raises name models and versions, never server paths or digests; the logs
    carry those.
    """

    def __init__(self, settings: Settings, metrics: ServiceMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.load_error: str | None = "not loaded yet"
        self._current: ServedModel | None = None
        self._retired: dict[str, MemoStats] = {}
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self._current is not None

    @property
    def model(self) -> ServedModel:
        """The model serving now; NotReady until the first one is loaded and warmed."""
        current = self._current
        if current is None:
            raise NotReady(f"no model is being served: {self.load_error}")
        return current

    def memo_stats(self) -> dict[str, MemoStats]:
        """The served model's memos, their hits and misses counted since start (over reloads)."""
        current = self._current.memo_stats() if self._current is not None else {}
        names = {*current, *self._retired}
        return {m: current.get(m, MemoStats()) + self._retired.get(m, MemoStats()) for m in names}

    def warm_up_sizes(self) -> list[int]:
        limit = self.settings.max_candidates
        return sorted({size for size in (1, 8, 64, 256, limit) if size <= limit})

    def load(self, name: str | None = None, version: int | None = None) -> ServedModel:
        """Resolve, verify and warm a bundle beside the current one, then swap it in.

        ValidationFailed for a name that is not a folder name of the models directory, NotFound
        when no such model or version exists, BundleRefused when the bundle fails verification;
        either way the model served before keeps serving.
        """
        with self._lock:
            path = self._resolve(name, version)
            where = f"{path.parent.name}/{path.name}"
            try:
                bundle = bundles.read(path)
                session = bundle.session(bundles.session_options(self.settings.intra_op_threads))
                served = ServedModel(bundle, session, self.settings, self.metrics)
                served.warm_up(self.warm_up_sizes())
            except bundles.BundleError as error:
                self._refused(f"{where}: {self._public(error.reason)}", str(error))
                details = [("bundle", self._public(error.reason))]
                raise BundleRefused(f"bundle refused: {where}: {details[0][1]}", details) from None
            except Exception as error:
                reason = self._public(f"{where}: {error}")
                self._refused(reason, f"{path}: {error}")
                raise BundleRefused(f"bundle refused: {reason}") from None
            if self._current is not None:
                for memo, stats in self._current.memo_stats().items():
                    old = self._retired.get(memo, MemoStats())
                    self._retired[memo] = old + MemoStats(stats.hits, stats.misses)
            self._current = served
            self.load_error = None
        if self.metrics is not None:
            self.metrics.reloads.labels("loaded").inc()
            self.metrics.serving(served.name, served.version, served.task)
        log.info(
            "serving model", extra={"model": served.name, "version": served.version, "path": path}
        )
        return served

    def reload(self, name: str | None = None, version: int | None = None) -> ServedModel:
        """Load the given version of the served model, else its promoted one, else its newest;
        the old one stays on failure."""
        current = self._current
        if name is None:
            name = current.name if current is not None else self.settings.model_name
        return self.load(name, version)

    def load_at_start(self, stop: threading.Event) -> None:
        """Serve the configured model's given version, else its promoted version (refused and
        named if it fails verification), else its newest version that verifies, logging each one
        refused; while none does, try again every `load_retry_seconds` until `stop` is set or a
        model serves (a reload may get there first)."""
        while not stop.is_set() and not self.ready:
            try:
                name, versions, promoted = self._start_candidates()
            except ServiceError as error:
                self.load_error = error.message
                log.error("no model served at start", extra={"reason": error.message})
            else:
                for version in versions:
                    if stop.is_set() or self.ready:
                        return
                    try:
                        self.load(name, version)
                        return
                    except ServiceError as error:
                        log.warning(
                            "start-up refused a version",
                            extra={"model": name, "version": version, "reason": error.message},
                        )
                self.load_error = (
                    f"the promoted version {versions[0]} of model {name!r} is refused: "
                    f"{self.load_error}"
                    if promoted
                    else f"no version of model {name!r} verifies (tried {versions}); "
                    f"the last refusal: {self.load_error}"
                )
                log.error("no model served at start", extra={"reason": self.load_error})
            stop.wait(self.settings.load_retry_seconds)

    def _start_candidates(self) -> tuple[str, list[int], bool]:
        """The model to serve at start, its versions to try (newest first), and whether the one
        version is its promoted one. Several models and no AFM_MODEL_NAME: none is guessed."""
        name, version = self.settings.model_name, self.settings.model_version
        if name is None:
            names = self.available_models()
            if len(names) > 1:
                raise NotFound(
                    f"several models and none chosen (AFM_MODEL_NAME): {', '.join(names)}",
                    [("name", "several models")],
                )
            if not names:
                raise NotFound("no bundle found", [("name", "no bundle found")])
            name = names[0]
        if version is not None:
            return name, [version], False
        available = sorted(bundles.versions(self.settings.models_dir / name), reverse=True)
        if not available:
            models = ", ".join(self.available_models()) or "none"
            raise NotFound(
                f"no bundle of model {name!r}; the models directory holds: {models}",
                [("name", "no such model")],
            )
        try:
            promoted = bundles.promoted(self.settings.models_dir, name)
        except bundles.BundleError as error:
            raise NotFound(self._public(str(error)), [("name", "promotion unreadable")]) from None
        if promoted is not None:
            return name, [promoted], True
        return name, available, False

    def available_models(self) -> list[str]:
        """Names of the models with at least one published version."""
        return bundles.model_names(self.settings.models_dir)

    def _resolve(self, name: str | None, version: int | None) -> Path:
        """The bundle folder for a name and version, inside the models directory."""
        if name is not None and (problem := name_problem(name)) is not None:
            self._refused(f"not a model name: {problem}", f"not a model name: {name!r}")
            raise ValidationFailed("not a model name", [("name", problem)])
        try:
            path = bundles.resolve(self.settings.models_dir, name, version)
        except bundles.BundleError as error:
            reason = self._public(error.reason)
            self._refused(reason, str(error))
            field = "version" if version is not None and "version" in error.reason else "name"
            if field == "name":
                models = ", ".join(self.available_models()) or "none"
                reason = f"{reason}; the models directory holds: {models}"
            raise NotFound(reason, [(field, self._public(error.reason))]) from None
        root = self.settings.models_dir.resolve()
        if not path.resolve().is_relative_to(root):
            self._refused("outside the models directory", f"{path} is outside {root}")
            raise ValidationFailed(
                "not a model of the models directory", [("name", "outside the models directory")]
            )
        return path

    def _public(self, text: str) -> str:
        """`text` without the models directory's absolute path (bundle folders read as
        `<name>/<version>`) or digests."""
        given = self.settings.models_dir
        for root in {str(given.resolve()), str(given.absolute())}:
            text = text.replace(root + os.sep, "").replace(root, "<models>")
        return DIGEST.sub("<sha256>", text)

    def _refused(self, reason: str, logged: str) -> None:
        if self._current is None:
            self.load_error = reason
        if self.metrics is not None:
            self.metrics.reloads.labels("refused").inc()
        log.error("bundle refused", extra={"reason": logged})
