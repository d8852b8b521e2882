"""Request and response schemas: static response models, and request models built from a bundle.

Request models are TypedDicts generated from the bundle's fields at load, so the OpenAPI document
shows the real field names and a whole request is parsed and validated in one pydantic-core pass
(`validate_json`) into plain dicts, without a Python model object per candidate.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NotRequired, TypeAlias

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    TypeAdapter,
    ValidationError,
    with_config,
)
from typing_extensions import TypedDict

from service.duplicates import refuse_repeated_keys
from service.errors import (
    InvalidJSON,
    PayloadTooLarge,
    ValidationFailed,
    field_path,
    validation_details,
)
from service.settings import ModelName
from training.bundle.features import (
    STANDARDISED_LIMIT,
    BucketField,
    CategoricalField,
    FeatureEncoder,
    HashedField,
    NumericField,
)

Value: TypeAlias = str | float
Focus: TypeAlias = Literal["rows", "candidates"]
ROW_LISTS = ("instances", "candidates")
EXPLAIN_TAGS = ("flag", "options")  # the tags of the two forms of `explain`
FORBID = ConfigDict(extra="forbid")


class ModelRef(BaseModel):
    """Which bundle answered."""

    name: str
    version: int


class LinearTerm(BaseModel):
    """The first-order term `w_i x_i` of one field."""

    field: str
    value: Value
    contribution: float


class PairTerm(BaseModel):
    """One field pair of a row: its attention weight and its share of the raw score."""

    fields: tuple[str, str]
    values: tuple[Value, Value]
    attention: float
    contribution: float


class RowExplanation(BaseModel):
    """The raw score of one row, the global bias, and its pairs with the largest |contribution|."""

    raw: float
    bias: float
    top_pairs: list[PairTerm]


class PairDifference(BaseModel):
    """One pair with a candidate field: this candidate's contribution minus the best one's."""

    fields: tuple[str, str]
    values: tuple[Value, Value]
    best_values: tuple[Value, Value]
    difference: float


class VersusBest(BaseModel):
    """Why the best candidate scores above this one: `raw_difference == linear + context_pairs +
    sum(top_pairs) + other_pairs`, each this candidate's term minus the best candidate's."""

    candidate: int = Field(description="the best candidate: its place in `candidates`")
    raw_difference: float = Field(description="this candidate's raw minus the best one's (<= 0)")
    linear: float = Field(description="difference of the first-order terms, all fields")
    context_pairs: float = Field(description="difference of the pairs of two context fields")
    top_pairs: list[PairDifference] = Field(
        description="the pairs with a candidate field of largest |difference|"
    )
    other_pairs: float = Field(description="difference of the other pairs with a candidate field")


class CandidateExplanation(BaseModel):
    """One candidate taken apart by what separates it from the others (`"explain": {"focus":
    "candidates"}`): `bias + context_linear + sum(linear) + context_pairs + sum(top_pairs) +
    other_pairs == raw`."""

    raw: float
    bias: float
    context_linear: float = Field(description="the first-order terms of the context's fields")
    linear: list[LinearTerm] = Field(description="the first-order term of each candidate field")
    context_pairs: float = Field(
        description="the pairs of two context fields, summed: near alike for every candidate"
    )
    top_pairs: list[PairTerm] = Field(
        description="the pairs with at least one candidate field of largest |contribution|"
    )
    other_pairs: float = Field(description="the other pairs with a candidate field, summed")
    versus_best: VersusBest


class PredictResponse(BaseModel):
    """Scores in request order; unseen and clipped values per field counted over the scored rows."""

    model: ModelRef
    task: str
    scores: list[float]
    unknown_values: dict[str, int] = Field(
        description="per categorical field, the scored rows whose value was unseen in training"
    )
    clipped_values: dict[str, int] | None = Field(
        default=None,
        description="per numeric and bucket field, the scored rows whose number lay outside the"
        " training range and was clipped to it",
    )
    explanations: list[RowExplanation] | list[CandidateExplanation] | None = Field(
        default=None,
        description="per row, with `explain`: its top pairs (`true`, or focus `rows`), or what"
        " separates it from the other candidates (focus `candidates`)",
    )


class ExplainResponse(BaseModel):
    """One row taken apart: `bias + sum(linear) + sum(pairs) == raw`; `top_pairs` with top_k."""

    model: ModelRef
    task: str
    score: float
    raw: float
    bias: float
    linear: list[LinearTerm]
    pairs: list[PairTerm]
    unknown_values: dict[str, int] = Field(
        description="per categorical field, 1 when the row's value was unseen in training"
    )
    clipped_values: dict[str, int] | None = Field(
        default=None,
        description="per numeric and bucket field, 1 when the row's number lay outside the"
        " training range and was clipped to it",
    )
    top_pairs: list[PairTerm] | None = None


class FieldInfo(BaseModel):
    """One input field of the model."""

    name: str
    kind: Literal["categorical", "numeric", "bucket", "hash"]
    cardinality: int | None = Field(
        description="known values (categorical), buckets (bucket) or hash slots (hash)"
    )
    examples: list[Value]


class PairAttention(BaseModel):
    """Mean attention of one field pair over the validation split."""

    fields: tuple[str, str]
    mean_attention: float


class ModelInfo(BaseModel):
    """What the served bundle is and how well it did."""

    name: str
    version: int
    task: str
    link: dict[str, Any]
    created: str | None
    fields: list[FieldInfo]
    pairs: int
    metrics: dict[str, Any]
    global_attention: list[PairAttention] | None
    promotion: dict[str, Any] | None = Field(
        default=None,
        description="the model's promoted.json now (name, version, by, at, metrics);"
        " null when none is promoted; its version is served after start-up or a reload",
    )


class Health(BaseModel):
    """The process is alive."""

    status: Literal["ok"]


class Ready(BaseModel):
    """A model is loaded and warmed."""

    status: Literal["ready"]
    model: ModelRef


class ReloadRequest(BaseModel):
    """Which bundle to load; by default the newest version of the model being served."""

    model_config = FORBID

    name: ModelName | None = None
    version: Annotated[int, Field(ge=1)] | None = None


class ReloadResponse(BaseModel):
    """The bundle now served and the one it replaced."""

    model: ModelRef
    previous: ModelRef | None


class ErrorDetail(BaseModel):
    """One offending field, as a path into the request (`candidates[3].item`)."""

    field: str
    problem: str


class ErrorInfo(BaseModel):
    """What went wrong, for people (`message`) and programs (`code`, `details`)."""

    code: str
    message: str
    details: list[ErrorDetail]


class ErrorResponse(BaseModel):
    """The one error shape of every 4xx and 5xx."""

    error: ErrorInfo


RELOAD_ADAPTER: TypeAdapter[ReloadRequest] = TypeAdapter(ReloadRequest)


def parse_reload(body: bytes) -> ReloadRequest:
    """Parse an `/admin/reload` body; an empty body asks for the newest version."""
    if not body.strip():
        return ReloadRequest()
    try:
        return RELOAD_ADAPTER.validate_json(body, strict=True)
    except ValidationError as error:
        errors = error.errors(include_url=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise InvalidJSON(f"the body is not valid JSON: {errors[0]['msg']}") from None
        details = validation_details(errors)
        raise ValidationFailed("the reload request is not valid", details) from None


_TypedDict: Any = TypedDict


def _value_type(
    field: CategoricalField | NumericField | BucketField | HashedField, max_length: int
) -> Any:
    if isinstance(field, HashedField):
        description = (
            f"hashed into {field.buckets:,} slots: xxh64 of the value's UTF-8 text; an integer"
            ' id is hashed by its decimal text, so 42 and "42" agree; every value is scored,'
            " none is unknown"
        )
        return Annotated[
            Annotated[str, StringConstraints(max_length=max_length)] | int,
            Field(examples=field.examples(3), description=description),
        ]
    if isinstance(field, CategoricalField):
        description = (
            f"categorical, {len(field.vocabulary)} known values; an unseen value is scored "
            "through the field's out-of-vocabulary slot and counted in `unknown_values`"
        )
        return Annotated[
            str,
            StringConstraints(max_length=max_length),
            Field(examples=field.examples(3), description=description),
        ]
    return Annotated[
        float,
        Field(
            allow_inf_nan=False,
            examples=[round(v, 3) for v in field.representatives()[:1]],
            description=_number_description(field),
        ),
    ]


def _number_description(field: NumericField | BucketField) -> str:
    if field.min is None or field.max is None:
        within = f"clipped to ±{STANDARDISED_LIMIT:g} standard deviations"
    else:
        within = f"clipped to the training range [{field.min:.6g}, {field.max:.6g}]"
    counted = "; a clipped value is counted in `clipped_values`"
    if isinstance(field, BucketField):
        return (
            f"a number placed in one of {field.buckets} quantile buckets learnt in training;"
            f" values outside the training range fall in the end buckets" + counted
            if field.min is not None
            else f"a number placed in one of {field.buckets} quantile buckets learnt in training"
        )
    if field.transform == "log1p":
        return (
            "a number, taken as log1p(max(value, 0)) (a value below 0 is clipped to 0), "
            f"{within}, and standardised with mean {field.mean:.6g} and std {field.std:.6g}"
            + counted
        )
    return (
        f"numeric, {within} and standardised with mean {field.mean:.6g} and std {field.std:.6g}"
        + counted
    )


def _rows(item: Any, max_rows: int, description: str) -> Any:
    return Annotated[list[item], Field(min_length=1, max_length=max_rows, description=description)]


def _shape(value: Any) -> str:
    return "instances" if isinstance(value, dict) and "instances" in value else "ranking"


def _explain_shape(value: Any) -> str:
    return "options" if isinstance(value, dict) else "flag"


def _untagged(error: Any) -> Any:
    """A pydantic error with the tag of `explain`'s two forms taken out of its location, so that
    details name `explain` and `explain.focus`; a wrong type says what `explain` may be."""
    loc = tuple(error["loc"])
    if len(loc) < 3 or loc[1] != "explain" or loc[2] not in EXPLAIN_TAGS:
        return error
    if len(loc) == 3:
        return {**error, "loc": loc[:2], "msg": "should be true, false or an object of options"}
    return {**error, "loc": loc[:2] + loc[3:]}


@dataclass(frozen=True)
class PredictRequest:
    """A validated `/predict` body: rows (instances or candidates) and the shared context."""

    rows: list[dict[str, Any]]
    context: dict[str, Any]
    ranking: bool
    explain: bool
    top_k: int
    focus: Focus = "rows"


@dataclass(frozen=True)
class RequestSchemas:
    """The request models of one bundle, and the validators built on them."""

    field_names: tuple[str, ...]
    num_pairs: int
    max_rows: int
    default_top_k: int
    predict: TypeAdapter[Any]
    row: TypeAdapter[Any]

    def parse_predict(self, body: bytes) -> PredictRequest:
        """Parse and validate a `/predict` body in one pass; raises a ServiceError naming fields.

        A ranking request is returned only when its context and each candidate together give
        every field exactly once, so every row of the result is complete; a key repeated within
        one object is refused rather than read last-wins.
        """
        try:
            request: dict[str, Any] = self.predict.validate_json(body, strict=True)
        except ValidationError as error:
            raise self._refusal(error.errors(include_url=False)) from None
        ranking = "instances" not in request
        if ranking:
            self._check_cover(request["context"], request["candidates"])
        explain = request.get("explain", False)
        options = explain if isinstance(explain, dict) else {}
        focus = options.get("focus", "rows")
        if focus == "candidates" and not ranking:
            raise ValidationFailed(
                "candidate-focused explanations need a ranking request",
                [("explain.focus", "`candidates` needs a `context` and its `candidates`")],
            )
        parsed = PredictRequest(
            rows=request["candidates"] if ranking else request["instances"],
            context=request["context"] if ranking else {},
            ranking=ranking,
            explain=explain is not False,
            top_k=request.get("top_k", self.default_top_k),
            focus=focus,
        )
        refuse_repeated_keys(body, _key_count(parsed, body) + len(options))
        return parsed

    def parse_explain_query(
        self, params: Iterable[tuple[str, str]], top_k: int | None
    ) -> dict[str, Any]:
        """Validate the row of a `GET /explain` query (`field=value` each once) and its `top_k`."""
        values: dict[str, str] = {}
        repeated = []
        for key, value in params:
            if key == "top_k":
                continue
            if key in values:
                repeated.append((key, "given more than once"))
            values[key] = value
        if repeated:
            raise ValidationFailed("each field takes one value", repeated)
        if top_k is not None and top_k > self.num_pairs:
            raise ValidationFailed(
                f"top_k must be at most {self.num_pairs}, the number of pairs",
                [("top_k", f"greater than {self.num_pairs}")],
            )
        return self.parse_row(values)

    def parse_row(self, values: dict[str, str]) -> dict[str, Any]:
        """Validate one row given as strings (query parameters); numbers are parsed from text."""
        try:
            row: dict[str, Any] = self.row.validate_python(values)
        except ValidationError as error:
            details = validation_details(error.errors(include_url=False))
            raise ValidationFailed("the query does not match the model's fields", details) from None
        return row

    def _check_cover(self, context: dict[str, Any], candidates: list[dict[str, Any]]) -> None:
        """Every candidate must hold exactly the fields the context leaves out.

        Both parts hold known fields only (the schema forbids others), so two passes over the
        keys decide it: when no candidate names a field outside the required set, each has at
        most that many, and the sizes add up to that many per candidate only if each is that set.
        """
        required = {name for name in self.field_names if name not in context}
        if (
            sum(map(len, candidates)) == len(required) * len(candidates)
            and set().union(*candidates) <= required
        ):
            return
        given = set(context).union(*candidates)
        details = [
            (f"context.{name}", "missing (in neither context nor any candidate)")
            for name in self.field_names
            if name not in given
        ]
        for i, candidate in enumerate(candidates):
            for name in self.field_names:
                if name in candidate and name in context:
                    details.append(
                        (f"candidates[{i}].{name}", "given in both context and candidates")
                    )
                elif name in required and name in given and name not in candidate:
                    details.append(
                        (f"candidates[{i}].{name}", "missing (in neither context nor here)")
                    )
        raise ValidationFailed(
            "context and each candidate together must give every field exactly once", details
        )

    def _refusal(self, errors: list[Any]) -> Exception:
        if any(e["type"] == "json_invalid" for e in errors):
            reason = errors[0]["msg"].removeprefix("Invalid JSON: ")
            return InvalidJSON(f"the body is not valid JSON: {reason}")
        for e in errors:
            loc = tuple(e["loc"])[1:]
            if e["type"] == "too_long" and len(loc) == 1 and loc[0] in ROW_LISTS:
                actual = (e.get("ctx") or {}).get("actual_length", "more")
                return PayloadTooLarge(
                    f"at most {self.max_rows} rows per request, got {actual}",
                    [(field_path(loc), f"more than {self.max_rows} rows")],
                )
        details = validation_details(map(_untagged, errors), strip=1)
        missing = {tuple(e["loc"])[1:] for e in errors if e["type"] == "missing"}
        if {("context",), ("candidates",)} <= missing:  # neither shape: say what the two are
            return ValidationFailed(
                "the body holds no rows: send `instances` (whole rows), or a `context` and its"
                " `candidates`",
                details,
            )
        return ValidationFailed("the request does not match the model's fields", details)

    def openapi(self, ref_template: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The `/predict` body schema and the definitions it refers to, for the OpenAPI document."""
        schema = self.predict.json_schema(ref_template=ref_template)
        return {k: v for k, v in schema.items() if k != "$defs"}, schema.get("$defs", {})


def _key_count(request: PredictRequest, body: bytes) -> int:
    """How many keys the objects of a parsed `/predict` body hold: the top level's (`explain`
    and `top_k` looked up in the body), the context's and every row's."""
    top = (2 if request.ranking else 1) + (b'"explain":' in body) + (b'"top_k":' in body)
    return top + len(request.context) + sum(map(len, request.rows))


def build_request_schemas(
    encoder: FeatureEncoder,
    num_pairs: int,
    max_rows: int,
    max_value_length: int,
    default_top_k: int,
) -> RequestSchemas:
    """Generate the request models of a bundle: real field names, its kinds, its example values."""
    types = {f.name: _value_type(f, max_value_length) for f in encoder.fields}
    top_k = min(default_top_k, num_pairs)
    instance = with_config(FORBID)(_TypedDict("Instance", dict(types)))
    partial = with_config(FORBID)(
        _TypedDict("InstanceFields", {name: NotRequired[t] for name, t in types.items()})
    )
    explain_options = with_config(FORBID)(
        _TypedDict(
            "ExplainOptions",
            {
                "focus": NotRequired[
                    Annotated[
                        Focus,
                        Field(
                            description="`rows` (as `true`): each row's top pairs; `candidates`"
                            " (ranking requests): per candidate the pairs with a candidate field,"
                            " the context's pairs summed, and the difference to the best candidate"
                        ),
                    ]
                ]
            },
        )
    )
    explain_choices: Any = Annotated[
        Annotated[bool, Tag("flag")] | Annotated[explain_options, Tag("options")],
        Discriminator(_explain_shape),
    ]
    options = {
        "explain": NotRequired[
            Annotated[
                explain_choices,
                Field(
                    description="add per-row explanations: `true` for each row's top pairs, or"
                    ' options such as `{"focus": "candidates"}`'
                ),
            ]
        ],
        "top_k": NotRequired[
            Annotated[
                int,
                Field(ge=1, le=num_pairs, description=f"pairs per explained row (default {top_k})"),
            ]
        ],
    }
    instances = with_config(FORBID)(
        _TypedDict(
            "PredictInstances",
            {"instances": _rows(instance, max_rows, "rows with every field"), **options},
        )
    )
    ranking = with_config(FORBID)(
        _TypedDict(
            "PredictRanking",
            {
                "context": Annotated[
                    partial, Field(description="fields shared by every candidate, encoded once")
                ],
                "candidates": _rows(partial, max_rows, "the remaining fields of each candidate"),
                **options,
            },
        )
    )
    shapes: Any = Annotated[instances, Tag("instances")] | Annotated[ranking, Tag("ranking")]
    request: Any = Annotated[shapes, Discriminator(_shape)]
    return RequestSchemas(
        field_names=tuple(encoder.names),
        num_pairs=num_pairs,
        max_rows=max_rows,
        default_top_k=top_k,
        predict=TypeAdapter(request),
        row=TypeAdapter(instance),
    )
