"""A small typed client for the AFM service, on httpx: `AFMClient` (sync) and `AsyncAFMClient`.

Usage:

    with AFMClient("http://127.0.0.1:8000") as afm:
        scores = afm.rank({"user": "0", ...}, [{"item": "1"}, {"item": "2"}])["scores"]

A call that fails to reach the service (a transport error) or is answered 503 is tried again up to
`retries` times, after `backoff` seconds doubled on each try, or after the answer's `Retry-After`
(at most MAX_RETRY_AFTER seconds).

A client holds one httpx connection pool for all its calls: create it once and share it. It needs
only httpx (the `client` extra), none of the service's own dependencies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, NotRequired, Self, TypedDict, cast

import httpx

Row = Mapping[str, str | float]
MAX_RETRY_AFTER = 30.0
POOL = httpx.Limits(max_connections=100, max_keepalive_connections=20)  # httpx's own defaults


class ModelRef(TypedDict):
    """Which bundle answered."""

    name: str
    version: int


class PairTerm(TypedDict):
    """One field pair: values, attention weight and contribution to the raw score."""

    fields: list[str]
    values: list[str | float]
    attention: float
    contribution: float


class RowExplanation(TypedDict):
    """Raw score, bias and the top pairs of one row."""

    raw: float
    bias: float
    top_pairs: list[PairTerm]


class ExplainOptions(TypedDict):
    """`explain` as an object: `focus` `rows` (as `True`) or `candidates` (ranking requests: per
    candidate the pairs with a candidate field and the difference to the best candidate)."""

    focus: NotRequired[Literal["rows", "candidates"]]


Explain = bool | ExplainOptions


class VersusBest(TypedDict):
    """A candidate against the request's best candidate, term by term."""

    candidate: int
    raw_difference: float
    linear: float
    context_pairs: float
    top_pairs: list[dict[str, Any]]
    other_pairs: float


class CandidateExplanation(TypedDict):
    """One candidate taken apart by what separates it from the others (focus `candidates`)."""

    raw: float
    bias: float
    context_linear: float
    linear: list[LinearTerm]
    context_pairs: float
    top_pairs: list[PairTerm]
    other_pairs: float
    versus_best: VersusBest


class _PredictBase(TypedDict):
    model: ModelRef
    task: str
    scores: list[float]
    unknown_values: dict[str, int]


class Prediction(_PredictBase, total=False):
    """The answer of `POST /predict`."""

    explanations: list[RowExplanation] | list[CandidateExplanation]


class LinearTerm(TypedDict):
    """The first-order term of one field."""

    field: str
    value: str | float
    contribution: float


class _ExplainBase(TypedDict):
    model: ModelRef
    task: str
    score: float
    raw: float
    bias: float
    linear: list[LinearTerm]
    pairs: list[PairTerm]
    unknown_values: dict[str, int]


class Explanation(_ExplainBase, total=False):
    """The answer of `GET /explain`; `top_pairs` when `top_k` was given."""

    top_pairs: list[PairTerm]


class AFMError(Exception):
    """An error answer: its HTTP status and the service's error body (`code`, `details`)."""

    def __init__(self, status_code: int, body: Any) -> None:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        self.status_code = status_code
        self.body = body
        self.code: str = error.get("code", "http_error")
        self.message: str = error.get("message", str(body))
        self.details: list[dict[str, str]] = error.get("details", [])
        super().__init__(f"{status_code} {self.code}: {self.message}")

    @property
    def fields(self) -> list[str]:
        """The request paths the service named, e.g. `candidates[3].item`."""
        return [detail.get("field", "") for detail in self.details]


def _predict_body(
    instances: Sequence[Row] | None,
    context: Row | None,
    candidates: Sequence[Row] | None,
    explain: Explain,
    top_k: int | None,
) -> dict[str, Any]:
    body: dict[str, Any] = (
        {"instances": list(instances)}
        if instances is not None
        else {"context": dict(context or {}), "candidates": list(candidates or [])}
    )
    if isinstance(explain, Mapping):
        body["explain"] = dict(explain)
    elif explain:
        body["explain"] = True
    if top_k is not None:
        body["top_k"] = top_k
    return body


def _explain_params(row: Row, top_k: int | None) -> dict[str, Any]:
    params: dict[str, Any] = {name: str(value) for name, value in row.items()}
    if top_k is not None:
        params["top_k"] = top_k
    return params


def _reload_body(name: str | None, version: int | None) -> dict[str, Any]:
    return {k: v for k, v in (("name", name), ("version", version)) if v is not None}


def _retry_delay(attempt: int, backoff: float, response: httpx.Response | None) -> float:
    """Seconds to wait before try `attempt + 1`: the answer's Retry-After, else the backoff."""
    if response is not None:
        header = response.headers.get("retry-after", "")
        try:
            return min(max(0.0, float(header)), MAX_RETRY_AFTER)
        except ValueError:
            pass
    return backoff * 2.0**attempt


def _answer(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if response.is_error:
        raise AFMError(response.status_code, body)
    return body


class AFMClient:
    """Blocking client; one connection pool, close it (or use `with`)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 10.0,
        retries: int = 2,
        backoff: float = 0.1,
        limits: httpx.Limits = POOL,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """`timeout`: seconds for each of connecting, sending, waiting and reading (or an
        httpx.Timeout); `retries`: tries after the first on a transport error or a 503;
        `backoff`: seconds before the first of them, doubled on each (a 503's Retry-After wins);
        `limits`: the connection pool's size."""
        self.retries, self.backoff = retries, backoff
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(
            base_url=base_url, timeout=timeout, headers=headers, limits=limits, transport=transport
        )

    def _send(self, method: str, url: str, **options: Any) -> httpx.Response:
        """One call, tried again on a transport error or a 503 as the client is configured."""
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, url, **options)
            except httpx.TransportError:
                if attempt == self.retries:
                    raise
                time.sleep(_retry_delay(attempt, self.backoff, None))
                continue
            if response.status_code != 503 or attempt == self.retries:
                return response
            time.sleep(_retry_delay(attempt, self.backoff, response))
        raise AssertionError("unreachable")

    def predict(
        self, instances: Sequence[Row], *, explain: Explain = False, top_k: int | None = None
    ) -> Prediction:
        """Score whole rows, in order."""
        body = _predict_body(instances, None, None, explain, top_k)
        return cast(Prediction, _answer(self._send("POST", "/predict", json=body)))

    def rank(
        self,
        context: Row,
        candidates: Sequence[Row],
        *,
        explain: Explain = False,
        top_k: int | None = None,
    ) -> Prediction:
        """Score candidates sharing one context (encoded once by the service), in order."""
        body = _predict_body(None, context, candidates, explain, top_k)
        return cast(Prediction, _answer(self._send("POST", "/predict", json=body)))

    def explain(self, row: Row, *, top_k: int | None = None) -> Explanation:
        """Take one row apart: bias, linear terms and pairs."""
        response = self._send("GET", "/explain", params=_explain_params(row, top_k))
        return cast(Explanation, _answer(response))

    def model(self) -> dict[str, Any]:
        """The served model's card."""
        return cast(dict[str, Any], _answer(self._send("GET", "/model")))

    def health(self) -> dict[str, Any]:
        """`GET /healthz`; raises AFMError unless alive."""
        return cast(dict[str, Any], _answer(self._send("GET", "/healthz")))

    def ready(self) -> bool:
        """Whether a model is loaded and warmed; False when the service cannot be reached.
        Asked once, without retries."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def reload(self, *, name: str | None = None, version: int | None = None) -> dict[str, Any]:
        """Ask the service to load and swap in a bundle (needs an API key)."""
        response = self._send("POST", "/admin/reload", json=_reload_body(name, version))
        return cast(dict[str, Any], _answer(response))

    def metrics(self) -> str:
        """The Prometheus exposition text."""
        response = self._send("GET", "/metrics")
        if response.is_error:
            _answer(response)
        return response.text

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


class AsyncAFMClient:
    """The same calls for asyncio code; `await client.aclose()` (or use `async with`)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 10.0,
        retries: int = 2,
        backoff: float = 0.1,
        limits: httpx.Limits = POOL,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`timeout`, `retries`, `backoff` and `limits` as for AFMClient."""
        self.retries, self.backoff = retries, backoff
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=base_url, timeout=timeout, headers=headers, limits=limits, transport=transport
        )

    async def _send(self, method: str, url: str, **options: Any) -> httpx.Response:
        """One call, tried again on a transport error or a 503 as the client is configured."""
        for attempt in range(self.retries + 1):
            try:
                response = await self._http.request(method, url, **options)
            except httpx.TransportError:
                if attempt == self.retries:
                    raise
                await asyncio.sleep(_retry_delay(attempt, self.backoff, None))
                continue
            if response.status_code != 503 or attempt == self.retries:
                return response
            await asyncio.sleep(_retry_delay(attempt, self.backoff, response))
        raise AssertionError("unreachable")

    async def predict(
        self, instances: Sequence[Row], *, explain: Explain = False, top_k: int | None = None
    ) -> Prediction:
        """Score whole rows, in order."""
        body = _predict_body(instances, None, None, explain, top_k)
        return cast(Prediction, _answer(await self._send("POST", "/predict", json=body)))

    async def rank(
        self,
        context: Row,
        candidates: Sequence[Row],
        *,
        explain: Explain = False,
        top_k: int | None = None,
    ) -> Prediction:
        """Score candidates sharing one context, in order."""
        body = _predict_body(None, context, candidates, explain, top_k)
        return cast(Prediction, _answer(await self._send("POST", "/predict", json=body)))

    async def explain(self, row: Row, *, top_k: int | None = None) -> Explanation:
        """Take one row apart: bias, linear terms and pairs."""
        response = await self._send("GET", "/explain", params=_explain_params(row, top_k))
        return cast(Explanation, _answer(response))

    async def model(self) -> dict[str, Any]:
        """The served model's card."""
        return cast(dict[str, Any], _answer(await self._send("GET", "/model")))

    async def health(self) -> dict[str, Any]:
        """`GET /healthz`; raises AFMError unless alive."""
        return cast(dict[str, Any], _answer(await self._send("GET", "/healthz")))

    async def ready(self) -> bool:
        """Whether a model is loaded and warmed; False when the service cannot be reached.
        Asked once, without retries."""
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    async def reload(
        self, *, name: str | None = None, version: int | None = None
    ) -> dict[str, Any]:
        """Ask the service to load and swap in a bundle (needs an API key)."""
        response = await self._send("POST", "/admin/reload", json=_reload_body(name, version))
        return cast(dict[str, Any], _answer(response))

    async def metrics(self) -> str:
        """The Prometheus exposition text."""
        response = await self._send("GET", "/metrics")
        if response.is_error:
            _answer(response)
        return response.text

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.aclose()
