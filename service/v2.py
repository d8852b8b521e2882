"""The Open Inference Protocol (KServe V2, REST) beside the service's own API.

KServe, Triton's clients (`tritonclient.http`) and tools written for them call the served model
through these routes unchanged. An inference request sends either

- the model's named fields, one input per field: BYTES for a categorical or hashed field, FP32 or
  FP64 for a numeric or bucket field, each of shape [N] or [N, 1]; they are validated and encoded as
  `/predict` encodes instances (the same encoder, unseen values through the OOV slot, counted), or
- the graph's own inputs, `feature_index` (INT64 [N, F]) and `feature_value` (FP32 [N, F]),
  checked to lie in each field's block.

Tensor data comes as JSON (flat in row-major order, or nested) or in the binary tensor extension
(`Inference-Header-Content-Length`). The answer holds `score`, or the outputs asked for by name.
Errors take V2's shape, `{"error": "..."}`: 400 for a request that is not valid (naming the input
or output), 404 for a model or version not served, 503 before a model is ready.

The routes translate the protocol and delegate to the runtime, as the service's own routes do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeAlias

import anyio
import anyio.to_thread
import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from pydantic import ValidationError as PydanticValidationError

from service.admission import Admission
from service.bodies import declared_length, read_limited
from service.drain import Drain
from service.errors import (
    BadRequest,
    InvalidJSON,
    NotFound,
    NotReady,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
    validation_details,
)
from service.handlers import RESPONSE_HEADERS
from service.responses import OrjsonResponse
from service.runtime import ALL, SCORE, Batch, ModelRuntime, ServedModel
from service.settings import Settings

HEADER_LENGTH = "inference-header-content-length"
EXTENSIONS = ["binary_tensor_data"]
PLATFORM = "onnxruntime_onnx"
INDEX, VALUE = "feature_index", "feature_value"
FIELD_TYPES = {"categorical": ("BYTES",), "numeric": ("FP32", "FP64"), "bucket": ("FP32", "FP64")}
NUMBER_TYPES = {
    "BOOL": ("?", "b"),
    "UINT8": ("<u1", "u"), "UINT16": ("<u2", "u"), "UINT32": ("<u4", "u"), "UINT64": ("<u8", "u"),
    "INT8": ("<i1", "iu"), "INT16": ("<i2", "iu"), "INT32": ("<i4", "iu"), "INT64": ("<i8", "iu"),
    "FP16": ("<f2", "fiu"), "FP32": ("<f4", "fiu"), "FP64": ("<f8", "fiu"),
}  # fmt: skip
"""V2 datatype -> (little-endian numpy type of its binary data, kinds of numpy array its JSON
data may parse to)."""

ParameterValue: TypeAlias = StrictBool | StrictInt | StrictFloat | StrictStr
Parameters: TypeAlias = dict[str, ParameterValue]
FORBID = ConfigDict(extra="forbid")


class TensorInput(BaseModel):
    """One input tensor: `data` in JSON (flat row-major or nested), or `binary_data_size` bytes of
    the binary part of the body (parameters)."""

    model_config = FORBID

    name: str
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: str
    parameters: Parameters | None = None
    data: Any = None


class RequestedOutput(BaseModel):
    """An output to return; `binary_data: true` in its parameters returns it as binary data."""

    model_config = FORBID

    name: str
    parameters: Parameters | None = None


class InferRequest(BaseModel):
    """`POST /v2/models/{name}/infer`: the named fields or the graph's tensors, and the outputs to
    return (`score` when none are named)."""

    model_config = FORBID

    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[TensorInput] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


class TensorOutput(BaseModel):
    """One output tensor: flat row-major `data`, or `binary_data_size` bytes of binary data."""

    name: str
    datatype: str
    shape: list[int]
    parameters: Parameters | None = None
    data: list[float] | None = None


class InferResponse(BaseModel):
    """The outputs asked for; `parameters` counts per field the rows whose value was unseen in
    training (`unknown_values.<field>`) or clipped to its range (`clipped_values.<field>`)."""

    model_name: str
    model_version: str
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[TensorOutput]


class TensorMetadata(BaseModel):
    """An input or output: its name, datatype and shape (-1: any length)."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    """The served model: `inputs` are its named fields; `parameters.graph_inputs` names the graph's
    own tensors, the other way to send rows."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any]


class ServerMetadata(BaseModel):
    """The server's name, version and protocol extensions."""

    name: str
    version: str
    extensions: list[str]


class V2Error(BaseModel):
    """V2's error shape."""

    error: str


ERROR_CASES = {
    400: "not a valid inference request; the message names the input or output",
    404: "no such model or version is served",
    408: "the body took too long to arrive",
    413: "too many rows or too large a body",
    415: "a compressed body",
    503: "no model loaded and warmed yet, draining, or overloaded",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of a route, in V2's shape."""
    return {s: {"model": V2Error, "description": ERROR_CASES[s]} for s in statuses}


def health(*statuses: int) -> dict[str, Any]:
    """A V2 health route: its status is the answer (200 true, else false), its body empty."""
    return {
        "response_class": Response,
        "responses": {200: {"description": "true, with an empty body"}, **errors(*statuses)},
    }


MODEL_ERRORS = errors(404, 503)
INFER_ANSWERS: dict[int | str, dict[str, Any]] = {
    **errors(*ERROR_CASES),
    200: {
        "description": "the outputs; with binary outputs, the JSON (its length in the header"
        " Inference-Header-Content-Length) and then their bytes",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
}


def v2_error(error: ServiceError) -> Response:
    """A ServiceError in V2's shape; a request that is not valid is V2's 400."""
    status = 400 if error.status_code == 422 else error.status_code
    named = "; ".join(f"{field}: {problem}" for field, problem in error.details)
    message = f"{error.message} ({named})" if named else error.message
    return OrjsonResponse(
        {"error": message}, status_code=status, headers=RESPONSE_HEADERS.get(status)
    )


class V2Route(APIRoute):
    """A route whose errors take V2's shape, `{"error": "..."}`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def v2_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except ServiceError as error:
                return v2_error(error)

        return v2_handler


async def get_runtime(request: Request) -> ModelRuntime:
    runtime: ModelRuntime = request.app.state.runtime
    return runtime


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


RuntimeDep = Annotated[ModelRuntime, Depends(get_runtime)]
SettingsDep = Annotated[Settings, Depends(get_settings)]

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (KServe V2)"], route_class=V2Route)


@router.get("/health/live", summary="V2: the server is alive", **health())
async def live() -> Response:
    return Response(status_code=200)


@router.get("/health/ready", summary="V2: a model is loaded and warm", **health(503))
async def ready(request: Request, runtime: RuntimeDep) -> Response:
    drain: Drain = request.app.state.drain
    if drain.draining:
        raise NotReady("the server is draining before it shuts down")
    if not runtime.ready:
        raise NotReady(f"no model is being served: {runtime.load_error}")
    return Response(status_code=200)


@router.get("", response_model=ServerMetadata, summary="V2: server metadata")
async def server_metadata(request: Request) -> Response:
    return OrjsonResponse({"name": "afm", "version": request.app.version, "extensions": EXTENSIONS})


@router.get(
    "/models/{name}",
    response_model=ModelMetadata,
    responses=MODEL_ERRORS,
    summary="V2: model metadata",
)
async def model_metadata(name: str, runtime: RuntimeDep) -> Response:
    return OrjsonResponse(metadata(served(runtime, name, None)))


@router.get(
    "/models/{name}/versions/{version}",
    response_model=ModelMetadata,
    responses=MODEL_ERRORS,
    summary="V2: model metadata of a version",
)
async def version_metadata(name: str, version: str, runtime: RuntimeDep) -> Response:
    return OrjsonResponse(metadata(served(runtime, name, version)))


@router.get("/models/{name}/ready", summary="V2: the model is ready", **health(404, 503))
async def model_ready(name: str, runtime: RuntimeDep) -> Response:
    served(runtime, name, None)
    return Response(status_code=200)


@router.get(
    "/models/{name}/versions/{version}/ready",
    summary="V2: the model's version is ready",
    **health(404, 503),
)
async def version_ready(name: str, version: str, runtime: RuntimeDep) -> Response:
    served(runtime, name, version)
    return Response(status_code=200)


def _inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its definitions written in place (an OpenAPI body schema)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    inlined: dict[str, Any] = inline(schema)
    return inlined


INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inline_schema(InferRequest)},
            "application/octet-stream": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "the JSON request, then the tensors' binary data; the header"
                    " Inference-Header-Content-Length gives the JSON's length in bytes",
                }
            },
        },
    }
}


@router.post(
    "/models/{name}/infer",
    response_model=InferResponse,
    responses=INFER_ANSWERS,
    openapi_extra=INFER_BODY,
    summary="V2: score rows given as named fields or as the graph's tensors",
)
async def infer(
    name: str, request: Request, runtime: RuntimeDep, settings: SettingsDep
) -> Response:
    return await _infer(request, served(runtime, name, None), settings)


@router.post(
    "/models/{name}/versions/{version}/infer",
    response_model=InferResponse,
    responses=INFER_ANSWERS,
    openapi_extra=INFER_BODY,
    summary="V2: score rows with a version of the model",
)
async def infer_version(
    name: str, version: str, request: Request, runtime: RuntimeDep, settings: SettingsDep
) -> Response:
    return await _infer(request, served(runtime, name, version), settings)


async def _infer(request: Request, model: ServedModel, settings: Settings) -> Response:
    """Hold an admission place, read and decode the request, score it, answer in V2's shape."""
    admission: Admission = request.app.state.admission
    async with admission.admit() as ticket:
        body = await read_body(request, settings.max_body_bytes, settings.body_timeout_seconds)
        ticket.check()
        call = decode(model, body, request.headers.get(HEADER_LENGTH), settings)
        if len(call.batch) >= settings.threadpool_min_rows:
            results = await anyio.to_thread.run_sync(model.run, call.batch, call.outputs)
        else:
            results = model.run(call.batch, call.outputs)
        return answer(model, call, results)


def served(runtime: ModelRuntime, name: str, version: str | None) -> ServedModel:
    """The served model when `name` (and `version`, when given) is what it serves: NotFound
    otherwise, NotReady before a model serves."""
    if not runtime.ready:
        if name not in runtime.available_models():
            raise NotFound(f"no model {name!r} in the models directory", [("model", name)])
        raise NotReady(f"model {name!r} is not loaded yet: {runtime.load_error}")
    model = runtime.model
    if name != model.name:
        raise NotFound(
            f"model {name!r} is not served; this server serves {model.name!r}", [("model", name)]
        )
    if version is not None and version != str(model.version):
        raise NotFound(
            f"version {version!r} of model {name!r} is not served; version {model.version} is",
            [("version", version)],
        )
    return model


def metadata(model: ServedModel) -> dict[str, Any]:
    """V2 model metadata: the named fields as inputs, the graph's outputs."""
    fields, pairs = len(model.names), len(model.pairs)
    inputs = [
        {"name": f.name, "datatype": FIELD_TYPES.get(f.kind, ("BYTES",))[0], "shape": [-1]}
        for f in model.encoder.fields
    ]
    outputs = [
        {"name": "score", "datatype": "FP32", "shape": [-1]},
        {"name": "raw", "datatype": "FP32", "shape": [-1]},
        {"name": "attention", "datatype": "FP32", "shape": [-1, pairs]},
        {"name": "pair_contribution", "datatype": "FP32", "shape": [-1, pairs]},
        {"name": "linear_contribution", "datatype": "FP32", "shape": [-1, fields]},
    ]
    graph_inputs = [
        {"name": INDEX, "datatype": "INT64", "shape": [-1, fields]},
        {"name": VALUE, "datatype": "FP32", "shape": [-1, fields]},
    ]
    return {
        "name": model.name,
        "versions": [str(model.version)],
        "platform": PLATFORM,
        "inputs": inputs,
        "outputs": outputs,
        "parameters": {"task": model.task, "graph_inputs": graph_inputs},
    }


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The whole body, of any media type (V2 clients send JSON, or JSON and binary data, often
    without a Content-Type): 413 beyond `limit` bytes, 408 when it has not all arrived within
    `timeout` seconds, 415 when compressed."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding} is not supported; send the body uncompressed",
            [("content-encoding", encoding)],
        )
    declared_length(request, limit)
    return await read_limited(request, limit, timeout)


@dataclass(frozen=True)
class InferCall:
    """A decoded inference request: the encoded rows, the outputs to compute, which of them to
    return as binary data, and what to echo."""

    batch: Batch
    outputs: list[str]
    binary: frozenset[str]
    id: str | None


REQUEST = InferRequest.model_validate_json


def decode(
    model: ServedModel, body: bytes, header_length: str | None, settings: Settings
) -> InferCall:
    """Split the body, validate the request and its tensors, and encode the rows."""
    header, binary = split_body(body, header_length)
    try:
        request = REQUEST(header, strict=True)
    except PydanticValidationError as error:
        errors = error.errors(include_url=False)
        if any(e["type"] == "json_invalid" for e in errors):
            reason = errors[0]["msg"].removeprefix("Invalid JSON: ")
            raise InvalidJSON(f"the request is not valid JSON: {reason}") from None
        raise BadRequest(
            "the request is not a V2 inference request", validation_details(errors)
        ) from None
    outputs, binary_outputs = requested_outputs(request)
    by_name = named_inputs(request.inputs)
    values = tensor_data(request.inputs, BinaryPart(binary))
    if INDEX in by_name or VALUE in by_name:
        batch = tensor_rows(model, by_name, values, settings.max_candidates)
    else:
        batch = field_rows(model, by_name, values, settings)
    return InferCall(batch, outputs, binary_outputs, request.id)


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON request and the binary part after it."""
    if header_length is None:
        return body, memoryview(b"")
    digits = header_length.strip()
    if not (digits.isascii() and digits.isdigit()) or int(digits) > len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length {header_length!r} is not a length within the body"
            f" of {len(body)} bytes",
            [("inference-header-content-length", header_length)],
        )
    length = int(digits)
    return body[:length], memoryview(body)[length:]


def requested_outputs(request: InferRequest) -> tuple[list[str], frozenset[str]]:
    """The outputs to compute in the order asked (`score` when none are), and those to return as
    binary data (each output's `binary_data`, else the request's `binary_data_output`)."""
    default_binary = (request.parameters or {}).get("binary_data_output", False) is True
    if not request.outputs:
        return list(SCORE), frozenset(SCORE) if default_binary else frozenset()
    names, binary = [], set()
    for output in request.outputs:
        if output.name not in ALL:
            raise BadRequest(
                f"output {output.name!r} is not an output of the model; its outputs are"
                f" {', '.join(ALL)}",
                [(f"outputs.{output.name}", "unknown output")],
            )
        if output.name in names:
            raise BadRequest(
                f"output {output.name!r} is asked for twice",
                [(f"outputs.{output.name}", "repeated")],
            )
        parameters = output.parameters or {}
        if "classification" in parameters or "shared_memory_region" in parameters:
            raise BadRequest(
                f"output {output.name!r}: classification and shared memory are not supported",
                [(f"outputs.{output.name}", "unsupported parameter")],
            )
        names.append(output.name)
        if parameters.get("binary_data", default_binary) is True:
            binary.add(output.name)
    return names, frozenset(binary)


def named_inputs(inputs: Sequence[TensorInput]) -> dict[str, TensorInput]:
    by_name: dict[str, TensorInput] = {}
    for tensor in inputs:
        if tensor.name in by_name:
            raise BadRequest(
                f"input {tensor.name!r} is given twice", [(f"inputs.{tensor.name}", "repeated")]
            )
        by_name[tensor.name] = tensor
    return by_name


class BinaryPart:
    """The binary part of a body, taken by inputs in their order in the request."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.offset = 0

    def take(self, name: str, size: int) -> memoryview:
        if self.offset + size > len(self.data):
            raise BadRequest(
                f"input {name!r}: binary_data_size {size} runs past the end of the body",
                [(f"inputs.{name}", "binary data shorter than binary_data_size")],
            )
        part = self.data[self.offset : self.offset + size]
        self.offset += size
        return part

    def check_used(self) -> None:
        if self.offset != len(self.data):
            raise BadRequest(
                f"the body holds {len(self.data) - self.offset} bytes of binary data that no"
                " input's binary_data_size claims",
                [("inference-header-content-length", "binary data left over")],
            )


def tensor_data(inputs: Sequence[TensorInput], binary: BinaryPart) -> dict[str, Any]:
    """Each input's values, flat in row-major order: a list of str (BYTES) or a numpy array;
    binary data is taken in the order of the inputs, as the extension has it."""
    values = {tensor.name: tensor_values(tensor, binary) for tensor in inputs}
    binary.check_used()
    return values


def tensor_values(tensor: TensorInput, binary: BinaryPart) -> list[str] | np.ndarray:
    name, datatype = tensor.name, tensor.datatype
    if datatype != "BYTES" and datatype not in NUMBER_TYPES:
        raise BadRequest(
            f"input {name!r}: {datatype!r} is not a V2 datatype",
            [(f"inputs.{name}", "unknown datatype")],
        )
    parameters = tensor.parameters or {}
    if "shared_memory_region" in parameters:
        raise BadRequest(
            f"input {name!r}: shared memory is not supported",
            [(f"inputs.{name}", "shared memory")],
        )
    count = math.prod(tensor.shape)
    size = parameters.get("binary_data_size")
    values: list[str] | np.ndarray
    if size is not None:
        if (
            not isinstance(size, int)
            or isinstance(size, bool)
            or size < 0
            or tensor.data is not None
        ):
            raise BadRequest(
                f"input {name!r}: binary_data_size must be a byte count, without `data`",
                [(f"inputs.{name}", "binary_data_size")],
            )
        raw = binary.take(name, size)
        values = binary_strings(name, raw) if datatype == "BYTES" else binary_numbers(tensor, raw)
    elif tensor.data is None:
        raise BadRequest(
            f"input {name!r} has no data: give `data`, or binary data and its binary_data_size",
            [(f"inputs.{name}", "no data")],
        )
    elif datatype == "BYTES":
        values = json_strings(name, tensor.data)
    else:
        values = json_numbers(tensor)
    if len(values) != count:
        raise BadRequest(
            f"input {name!r}: shape {tensor.shape} holds {count} values, its data {len(values)}",
            [(f"inputs.{name}", "data and shape disagree")],
        )
    return values


def binary_strings(name: str, raw: memoryview) -> list[str]:
    """BYTES in the binary extension: each element a 4-byte little-endian length, then its bytes."""
    strings, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BadRequest(
                f"input {name!r}: the binary BYTES data ends inside an element's length",
                [(f"inputs.{name}", "truncated binary data")],
            )
        length = int.from_bytes(raw[offset : offset + 4], "little")
        start, offset = offset + 4, offset + 4 + length
        if offset > len(raw):
            raise BadRequest(
                f"input {name!r}: an element runs past its binary data",
                [(f"inputs.{name}", "truncated binary data")],
            )
        try:
            strings.append(str(raw[start:offset], "utf-8"))
        except UnicodeDecodeError:
            raise BadRequest(
                f"input {name!r}: element {len(strings)} is not UTF-8 text",
                [(f"inputs.{name}", "not UTF-8")],
            ) from None
    return strings


def binary_numbers(tensor: TensorInput, raw: memoryview) -> np.ndarray:
    dtype = np.dtype(NUMBER_TYPES[tensor.datatype][0])
    if len(raw) % dtype.itemsize:
        raise BadRequest(
            f"input {tensor.name!r}: {len(raw)} bytes are not whole {tensor.datatype} values",
            [(f"inputs.{tensor.name}", "binary data and datatype disagree")],
        )
    return np.frombuffer(raw, dtype=dtype)


def json_strings(name: str, data: Any) -> list[str]:
    flat = _flatten(data)
    if set(map(type, flat)) - {str}:
        raise BadRequest(
            f"input {name!r}: BYTES data must be strings", [(f"inputs.{name}", "not a string")]
        )
    return flat


def json_numbers(tensor: TensorInput) -> np.ndarray:
    name = tensor.name
    numpy_type, kinds = NUMBER_TYPES[tensor.datatype]
    problem = f"{tensor.datatype} data must be {'booleans' if kinds == 'b' else 'numbers'}"
    try:
        array = np.asarray(tensor.data if isinstance(tensor.data, list) else [tensor.data])
    except ValueError:
        raise BadRequest(
            f"input {name!r}: nested data must be rectangular",
            [(f"inputs.{name}", "ragged data")],
        ) from None
    if array.dtype.kind not in kinds and array.size:
        raise BadRequest(f"input {name!r}: {problem}", [(f"inputs.{name}", problem)])
    return array.astype(np.dtype(numpy_type).newbyteorder("="), copy=False).ravel()


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not data or type(data[0]) is not list:  # flat; a list deeper in is no string, refused
        return data
    return [leaf for value in data for leaf in _flatten(value)]


def field_rows(
    model: ServedModel,
    inputs: Mapping[str, TensorInput],
    values: Mapping[str, Any],
    settings: Settings,
) -> Batch:
    """Rows given as one input per named field, encoded as `/predict` encodes instances."""
    unknown = [name for name in inputs if name not in model.positions]
    if unknown:
        raise BadRequest(
            f"input {unknown[0]!r} is not a field of the model; its inputs are the fields"
            f" {', '.join(model.names)}, or {INDEX} and {VALUE}",
            [(f"inputs.{name}", "unknown input") for name in unknown],
        )
    missing = [name for name in model.names if name not in inputs]
    if missing:
        raise BadRequest(
            f"input {missing[0]!r} is missing: send every field of the model",
            [(f"inputs.{name}", "missing") for name in missing],
        )
    rows = rows_of(inputs[model.names[0]], settings.max_candidates)
    columns: dict[str, Any] = {}
    for field in model.encoder.fields:
        tensor = inputs[field.name]
        allowed = FIELD_TYPES.get(field.kind, ("BYTES",))
        if tensor.datatype not in allowed:
            raise BadRequest(
                f"input {field.name!r} is {tensor.datatype}; the {field.kind} field takes"
                f" {' or '.join(allowed)}",
                [(f"inputs.{field.name}", f"datatype {tensor.datatype}")],
            )
        if rows_of(tensor, settings.max_candidates) != rows:
            raise BadRequest(
                f"input {field.name!r} has shape {tensor.shape}, input {model.names[0]!r}"
                f" {inputs[model.names[0]].shape}: every field gives one value per row",
                [(f"inputs.{field.name}", "rows differ")],
            )
        columns[field.name] = field_column(field.name, values[field.name], settings)
    return model.encode_columns(columns)


def field_column(name: str, values: list[str] | np.ndarray, settings: Settings) -> Any:
    """The raw values of one field, refused as `/predict` refuses them: text over the length
    limit, numbers that are not finite."""
    if isinstance(values, list):
        longest = max(map(len, values), default=0)
        if longest > settings.max_value_length:
            raise BadRequest(
                f"input {name!r}: a value is {longest} characters, at most"
                f" {settings.max_value_length} are allowed",
                [(f"inputs.{name}", "value too long")],
            )
        return values
    numbers = values.astype(np.float64)
    if not np.isfinite(numbers).all():
        raise BadRequest(
            f"input {name!r}: every value must be a finite number",
            [(f"inputs.{name}", "not finite")],
        )
    return numbers


def rows_of(tensor: TensorInput, max_rows: int) -> int:
    """N of a field input of shape [N] or [N, 1], at least 1 and at most `max_rows`."""
    shape = tensor.shape
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise BadRequest(
            f"input {tensor.name!r} has shape {shape}; a field takes [N] or [N, 1]",
            [(f"inputs.{tensor.name}", f"shape {shape}")],
        )
    return check_rows(tensor.name, shape[0], max_rows)


def check_rows(name: str, rows: int, max_rows: int) -> int:
    if rows < 1:
        raise BadRequest(f"input {name!r} has no rows", [(f"inputs.{name}", "no rows")])
    if rows > max_rows:
        raise PayloadTooLarge(
            f"input {name!r}: at most {max_rows} rows per request, got {rows}",
            [(f"inputs.{name}", f"more than {max_rows} rows")],
        )
    return rows


def tensor_rows(
    model: ServedModel,
    inputs: Mapping[str, TensorInput],
    values: Mapping[str, Any],
    max_rows: int,
) -> Batch:
    """Rows given as the graph's own inputs, `feature_index` INT64 and `feature_value` FP32
    [N, F], and nothing else."""
    others = [name for name in inputs if name not in (INDEX, VALUE)]
    if others:
        raise BadRequest(
            f"input {others[0]!r}: send the named fields or {INDEX} and {VALUE}, not both",
            [(f"inputs.{name}", "mixed with the graph's tensors") for name in others],
        )
    fields = len(model.names)
    arrays = {}
    for name, datatype in ((INDEX, "INT64"), (VALUE, "FP32")):
        if name not in inputs:
            raise BadRequest(
                f"input {name!r} is missing: the graph takes {INDEX} and {VALUE} together",
                [(f"inputs.{name}", "missing")],
            )
        tensor = inputs[name]
        if tensor.datatype != datatype:
            raise BadRequest(
                f"input {name!r} is {tensor.datatype}; the graph takes {datatype}",
                [(f"inputs.{name}", f"datatype {tensor.datatype}")],
            )
        if len(tensor.shape) != 2 or tensor.shape[1] != fields:
            raise BadRequest(
                f"input {name!r} has shape {tensor.shape}; the graph takes [N, {fields}]",
                [(f"inputs.{name}", f"shape {tensor.shape}")],
            )
        check_rows(name, tensor.shape[0], max_rows)
        arrays[name] = np.ascontiguousarray(values[name]).reshape(tensor.shape)
    if inputs[INDEX].shape != inputs[VALUE].shape:
        raise BadRequest(
            f"input {VALUE!r} has shape {inputs[VALUE].shape}, input {INDEX!r}"
            f" {inputs[INDEX].shape}: they give the same rows",
            [(f"inputs.{VALUE}", "rows differ")],
        )
    return model.tensor_batch(arrays[INDEX], arrays[VALUE])


def answer(model: ServedModel, call: InferCall, results: Mapping[str, np.ndarray]) -> Response:
    """The V2 response: JSON, with the outputs asked for as binary data after it."""
    outputs, buffers = [], []
    for name in call.outputs:
        array = results[name]
        output: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(array.shape)}
        if name in call.binary:
            data = np.ascontiguousarray(array, dtype="<f4").tobytes()
            output["parameters"] = {"binary_data_size": len(data)}
            buffers.append(data)
        else:
            output["data"] = np.ascontiguousarray(array).ravel()
        outputs.append(output)
    counts = {f"unknown_values.{k}": v for k, v in call.batch.unseen.items()}
    counts.update({f"clipped_values.{k}": v for k, v in call.batch.clipped.items()})
    body: dict[str, Any] = {"model_name": model.name, "model_version": str(model.version)}
    if call.id is not None:
        body["id"] = call.id
    if counts:
        body["parameters"] = counts
    body["outputs"] = outputs
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not buffers:
        return Response(header, media_type="application/json")
    return Response(
        b"".join([header, *buffers]),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )
