"""The contract between training and serving (DESIGN.md, contracts 1 and 2).

Torch-free and pyarrow-free: the trainer writes bundles through this package and the service reads
them through it; nothing else crosses between the two.

- `manifest`: bundle.json as a typed, validated `Manifest`, and the graph's I/O signature
- `features`: the feature spec and the fitted fields that encode raw values for the graph
- `store`: publishing, promoting, resolving versions and reading a bundle back verified
- `alias`: promoted.json, the version of a model that is served
- `session`: the onnxruntime session on a bundle's graph, its I/O checked
"""

from training.bundle.alias import ALIAS, Promotion
from training.bundle.errors import BundleError
from training.bundle.manifest import FORMAT_VERSION, INPUTS, OUTPUTS, Manifest, io_signature
from training.bundle.session import open_session, session_options
from training.bundle.store import (
    GRAPH,
    MANIFEST,
    Bundle,
    model_names,
    promote,
    promoted,
    promotion_of,
    publish,
    read,
    resolve,
    sha256_file,
    versions,
)

__all__ = [
    "ALIAS",
    "FORMAT_VERSION",
    "GRAPH",
    "INPUTS",
    "MANIFEST",
    "OUTPUTS",
    "Bundle",
    "BundleError",
    "Manifest",
    "Promotion",
    "io_signature",
    "model_names",
    "open_session",
    "promote",
    "promoted",
    "promotion_of",
    "publish",
    "read",
    "resolve",
    "session_options",
    "sha256_file",
    "versions",
]
