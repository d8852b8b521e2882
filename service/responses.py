"""The JSON response of every route and error: orjson, with numpy arrays written directly."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse


class OrjsonResponse(JSONResponse):
    """JSON rendered by orjson; the runtime's numpy arrays are serialised without conversion."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
