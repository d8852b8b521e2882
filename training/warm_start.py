"""Warm start: a published model continued on new rows of the same fields.

Each categorical field's vocabulary is the parent's, in the parent's order, followed by the values
the new training rows bring that the parent does not know (in the new rows' frequency order, with
the data's min_count). They are appended at the end of the field's block, so every later block
moves and a parent row keeps its weights at a new global index (`rows`). Numeric and bucket fields
keep the parent's fitted transform and range. A new value starts from the parent's OOV row of its
field, the row that scored it before: the continued model starts out predicting as the parent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from training.bundle.features import AnyField, CategoricalField, FeatureEncoder
from training.model import AFM, AFMConfig

GROWN = ("linear.weight", "embedding.weight")  # (num_features, ...) tables; the rest is copied


@dataclass(frozen=True)
class Grown:
    """The parent's encoder extended by new values, and where the parent's rows went."""

    encoder: FeatureEncoder
    rows: np.ndarray  # (parent num_features,) int64: each parent row's new global index
    sources: np.ndarray  # (num_features,) int64: the parent row each new row starts from
    added: dict[str, int]  # new values per categorical field


def grow_encoder(parent: FeatureEncoder, fitted: FeatureEncoder) -> Grown:
    """`parent` with each categorical vocabulary extended by `fitted`'s unknown values (`fitted`:
    an encoder fit on the new training rows, fields in the parent's order and kinds)."""
    fields: list[AnyField] = []
    rows = np.empty(parent.num_features, dtype=np.int64)
    sources: list[np.ndarray] = []
    added: dict[str, int] = {}
    offset = 0
    for old, new in zip(parent.fields, fitted.fields, strict=True):
        if old.name != new.name or old.kind != new.kind:
            raise ValueError(
                f"field {new.name!r} ({new.kind}) is not the parent's {old.name!r} ({old.kind})"
            )
        old_rows = np.arange(old.offset, old.offset + old.size, dtype=np.int64)
        if isinstance(old, CategoricalField) and isinstance(new, CategoricalField):
            known = sorted(old.vocabulary, key=old.vocabulary.__getitem__)
            fresh = [
                v
                for v in sorted(new.vocabulary, key=new.vocabulary.__getitem__)
                if v not in old.vocabulary
            ]
            field: AnyField = CategoricalField.model_validate(
                CategoricalField.fitted(old.name, offset, [*known, *fresh]).model_dump()
            )
            added[old.name] = len(fresh)
            sources.append(np.concatenate([old_rows, np.full(len(fresh), old.offset)]))
        else:
            field = type(old).model_validate({**old.model_dump(), "offset": offset})
            sources.append(old_rows)
        rows[old.offset : old.offset + old.size] = np.arange(offset, offset + old.size)
        fields.append(field)
        offset += field.size
    return Grown(FeatureEncoder(fields), rows, np.concatenate(sources), added)


def start_model(parent: AFM, grown: Grown, dropout: float) -> AFM:
    """An AFM of the parent's sizes on the grown table: every parent weight kept (its rows at
    their new indices), each new value's rows copied from its field's OOV row."""
    config = AFMConfig(
        **{
            **parent.config.to_dict(),
            "num_features": grown.encoder.num_features,
            "dropout": dropout,
        }
    )
    model = AFM(config)
    state = model.state_dict()
    sources = torch.from_numpy(grown.sources)
    for key, value in parent.state_dict().items():
        state[key] = value.index_select(0, sources) if key in GROWN else value
    model.load_state_dict(state)
    return model
