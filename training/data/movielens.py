"""`ml-100k`: MovieLens 100K ratings joined with user and film side features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from training.bundle.features import FeatureSpec, FieldSpec
from training.data.download import fetch_from_wheel
from training.data.splits import (
    SplitPlan,
    Splits,
    Task,
    derived,
    fingerprint_files,
    split_rows,
)
from training.readers import from_arrow

SOURCE = "https://files.pythonhosted.org/packages/py3/r/recbole/recbole-1.2.1-py3-none-any.whl"
FILES = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}
# A film has one to six of these genres. One feature per field (DESIGN.md), so each genre is a
# field of its own holding "1" or "0": all of a film's genres reach the model, not just its first.
GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
    "Western", "unknown",
)  # fmt: skip


def genre_field(genre: str) -> str:
    """`Children's` -> `genre_childrens`, `Sci-Fi` -> `genre_sci_fi`: plain names for requests."""
    return "genre_" + genre.lower().replace("'", "").replace("-", "_")


FIELDS = (
    FieldSpec("user_id"), FieldSpec("item_id"), FieldSpec("age", "numeric"), FieldSpec("gender"),
    FieldSpec("occupation"), FieldSpec("zip_prefix"), FieldSpec("release_year"),
    *(FieldSpec(genre_field(g)) for g in GENRES),
)  # fmt: skip


def load(task: Task, directory: Path, seed: int = 0, download: bool = False) -> Splits:
    """MovieLens 100K ratings joined with user and item side features; seeded 80/10/10 split."""
    if download:
        fetch_from_wheel(SOURCE, "recbole/dataset_example/ml-100k/", FILES, directory)
    paths = [directory / name for name in FILES]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: pass --data-dir, the folder that holds ml-100k/, or --download"
            )
    inter, users, items = (_read_atomic(p) for p in paths)
    users = users.append_column(
        "zip_prefix", pc.utf8_slice_codeunits(pc.cast(users["zip_code"], pa.string()), 0, 3)
    )
    genres_of = [set(str(text).split(" ")) for text in items["class"].to_pylist()]
    for genre in GENRES:
        flags = pa.array(["1" if genre in genres else "0" for genres in genres_of])
        items = items.append_column(genre_field(genre), flags)
    # Arrow's hash join returns rows in no fixed order: keep the ratings' own order, or the
    # seeded split would differ between runs (and a model started from another's weights would
    # be tested on rows it trained on).
    inter = inter.append_column("row", pa.array(np.arange(inter.num_rows)))
    joined = inter.join(users, "user_id").join(items, "item_id").sort_by("row")
    joined = joined.append_column("label", pc.cast(joined["rating"], pa.float32()))
    spec = FeatureSpec(FIELDS, label="label")
    table = from_arrow(joined, spec)
    rating = table.label
    table.label = (rating >= 4).astype(np.float32) if task == "ctr" else rating
    train, validation, test = split_rows(table, seed, (0.8, 0.1))
    fingerprint = derived(fingerprint_files(paths), f"split-seed={seed}")  # the rows trained on
    plan = SplitPlan("random", (0.8, 0.1, 0.1), seed=seed)
    return Splits("ml-100k", task, spec, train, validation, test, (1.0, 5.0), fingerprint, plan)


def _read_atomic(path: Path) -> pa.Table:
    """A RecBole atomic file (tab-separated), its header's types (`user_id:token`) dropped."""
    table = pacsv.read_csv(
        path,
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pacsv.ConvertOptions(strings_can_be_null=False),
        read_options=pacsv.ReadOptions(use_threads=True),
    )
    return table.rename_columns([name.split(":")[0] for name in table.column_names])
