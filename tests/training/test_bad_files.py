"""A user's own file that cannot train a sound model stops before any training: a non-zero exit,
a message naming the file and the column and what was found, and no bundle published."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.cli import main

COLUMNS = ("ts", "user", "item", "hour", "device", "price", "clicked")
FIELDS = "user,item,hour,device,price:numeric"


def clicks(rows: int = 200, seed: int = 0) -> dict[str, list[str]]:
    """A small click log as text columns: (ts, user, item, hour, device, price, clicked)."""
    rng = np.random.default_rng(seed)
    return {
        "ts": [str(1_700_000_000 + 60 * i) for i in range(rows)],
        "user": [f"u{v}" for v in rng.integers(0, 20, rows)],
        "item": [f"i{v}" for v in rng.integers(0, 10, rows)],
        "hour": [str(v) for v in rng.integers(0, 24, rows)],
        "device": rng.choice(["ios", "android", "web"], rows).tolist(),
        "price": [f"{v:.2f}" for v in rng.lognormal(1, 1, rows)],
        "clicked": [str(v) for v in rng.integers(0, 2, rows)],
    }


def write_csv(path: Path, columns: dict[str, list[str]], delimiter: str = ",") -> Path:
    names = list(columns)
    lines = [delimiter.join(names)]
    lines += [delimiter.join(row) for row in zip(*(columns[n] for n in names), strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def changed(column: str, make: Callable[[int, str], str], **rest: object) -> dict[str, list[str]]:
    """The click log with one column's values remade from (row, value)."""
    data = clicks(**rest)  # type: ignore[arg-type]
    data[column] = [make(i, v) for i, v in enumerate(data[column])]
    return data


def one_file(columns: dict[str, list[str]], delimiter: str = ",") -> Callable[[Path], list[str]]:
    def build(folder: Path) -> list[str]:
        return ["--data", str(write_csv(folder / "clicks.csv", columns, delimiter))]

    return build


def text_file(content: str) -> Callable[[Path], list[str]]:
    def build(folder: Path) -> list[str]:
        (folder / "clicks.csv").write_text(content)
        return ["--data", str(folder / "clicks.csv")]

    return build


def parquet(columns: dict[str, object]) -> Callable[[Path], list[str]]:
    def build(folder: Path) -> list[str]:
        pq.write_table(pa.table(columns), folder / "clicks.parquet")
        return ["--data", str(folder / "clicks.parquet")]

    return build


def directory(*files: tuple[str, dict[str, list[str]] | None]) -> Callable[[Path], list[str]]:
    """A directory of files: CSV from columns, or a Parquet file of the click log (None)."""

    def build(folder: Path) -> list[str]:
        logs = folder / "logs"
        logs.mkdir()
        for name, columns in files:
            if columns is None:
                pq.write_table(pa.table(clicks()), logs / name)
            else:
                write_csv(logs / name, columns)
        return ["--data", str(logs)]

    return build


def pre_split(train: dict[str, list[str]]) -> Callable[[Path], list[str]]:
    def build(folder: Path) -> list[str]:
        paths = [
            write_csv(folder / "train.csv", train),
            write_csv(folder / "valid.csv", clicks(seed=1)),
            write_csv(folder / "test.csv", clicks(seed=2)),
        ]
        return ["--train", str(paths[0]), "--validation", str(paths[1]), "--test", str(paths[2])]

    return build


def without(column: str) -> dict[str, list[str]]:
    data = clicks()
    del data[column]
    return data


CSV_TEXT = ",".join(COLUMNS) + "\n"
BAD = [
    # (id, the data, options beyond --fields FIELDS --label clicked, what the message names)
    ("ctr-labels-0-and-2", one_file(changed("clicked", lambda i, v: "2" if v == "1" else "0")),
     [], ["clicks.csv", "'clicked'", "'2'", "--positive-label 2"]),
    ("ctr-labels-yes-no", one_file(changed("clicked", lambda i, v: "yes" if v == "1" else "no")),
     [], ["clicks.csv", "'clicked'", "'yes'", "--positive-label yes"]),
    ("positive-label-not-in-the-column",
     one_file(changed("clicked", lambda i, v: "yes" if v == "1" else "no")),
     ["--positive-label", "true"], ["clicks.csv", "'clicked'", "no value 'true'", "'yes'"]),
    ("positive-label-under-rating", one_file(clicks()), ["--task", "rating", "--positive-label", "1"],
     ["--positive-label is for --task ctr"]),
    ("byte-order-mark-and-misspelt-label", text_file("\ufeffuser,item,clicked\nu1,i1,1\n"),
     ["--fields", "user,item", "--label", "clickd"],
     ["clicks.csv", "no column 'clickd'", "did you mean 'clicked'", "columns are: user, item"]),
    ("rating-label-not-a-number",
     one_file(changed("clicked", lambda i, v: "good" if v == "1" else "bad")),
     ["--task", "rating"], ["clicks.csv", "'clicked'", "not numbers", "'good'"]),
    ("rating-label-infinite", one_file(changed("clicked", lambda i, v: "inf" if i == 7 else v)),
     ["--task", "rating"], ["clicks.csv", "'clicked'", "not finite", "'inf'"]),
    ("label-cells-empty", one_file(changed("clicked", lambda i, v: "" if i % 50 == 3 else v)),
     [], ["clicks.csv", "'clicked'", "empty in 4 rows"]),
    ("one-class-only", one_file(changed("clicked", lambda i, v: "0")),
     [], ["clicks.csv", "every label in the train split is 0"]),
    ("field-misspelt", one_file(clicks()), ["--fields", "user,item,devcie"],
     ["clicks.csv", "no column 'devcie'", "did you mean 'device'", "ts, user, item"]),
    ("label-missing", one_file(clicks()), ["--label", "click"],
     ["clicks.csv", "no column 'click'", "did you mean 'clicked'"]),
    ("field-named-twice", one_file(clicks()), ["--fields", "user,item,user"],
     ["--fields", "'user' twice"]),
    ("label-among-fields", one_file(clicks()), ["--fields", "user,item,clicked"],
     ["--label 'clicked' is also in --fields"]),
    ("unknown-field-kind", one_file(clicks()), ["--fields", "user,price:number"],
     ["--fields", "'price:number'"]),
    ("empty-file", text_file(""), [], ["clicks.csv is empty"]),
    ("header-and-no-rows", text_file(CSV_TEXT), [], ["clicks.csv has a header but no rows"]),
    ("delimiter-not-detected", one_file(clicks(), delimiter=" "), [],
     ["clicks.csv", "could not detect the delimiter", "--delimiter"]),
    ("semicolons-read-with-commas", one_file(clicks(), delimiter=";"), ["--delimiter", ","],
     ["clicks.csv", "no column 'user'", "is it ';'"]),
    ("numeric-field-with-text",
     one_file(changed("price", lambda i, v: "free" if i % 40 == 0 else v)),
     [], ["clicks.csv", "'price'", "5 values that are not numbers", "'free'"]),
    ("parquet-without-a-column", parquet({k: v for k, v in clicks().items() if k != "device"}),
     [], ["clicks.parquet", "no column 'device'"]),
    ("parquet-numeric-field-of-words",
     parquet({**clicks(), "price": ["cheap"] * 200}),
     [], ["clicks.parquet", "'price'", "200 values", "'cheap'"]),
    ("directory-of-csv-and-parquet", directory(("a.csv", clicks()), ("b.parquet", None)),
     [], ["logs", "CSV (a.csv)", "Parquet (b.parquet)"]),
    ("directory-without-data-files", directory(), [], ["logs holds no CSV"]),
    ("directory-file-without-a-column", directory(("a.csv", clicks()), ("b.csv", without("device"))),
     [], ["b.csv", "no column 'device'"]),
    ("split-by-column-missing", one_file(clicks()), ["--split-by", "tss"],
     ["clicks.csv", "no column 'tss' (--split-by)", "did you mean 'ts'"]),
    ("split-by-column-with-gaps", one_file(changed("ts", lambda i, v: "" if i == 5 else v)),
     ["--split-by", "ts"], ["clicks.csv", "'ts' (--split-by) is empty in 1 rows"]),
    ("too-few-rows-to-split", one_file(clicks(rows=3)), [],
     ["clicks.csv", "the validation split has no rows"]),
    ("data-not-found", lambda folder: ["--data", str(folder / "nowhere.csv")], [],
     ["nowhere.csv not found"]),
    ("pre-split-train-file-labels",
     pre_split(changed("clicked", lambda i, v: "yes" if v == "1" else "no")),
     ["--dataset", "files"], ["train.csv", "'clicked'", "--positive-label yes"]),
    ("data-and-pre-split-files", lambda folder: [
        *one_file(clicks())(folder), "--train", str(folder / "clicks.csv")],
     [], ["--data is split for you"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("build", "options", "named"), [c[1:] for c in BAD], ids=[c[0] for c in BAD]
)
def test_a_bad_file_stops_before_training_naming_file_and_column(build, options, named, tmp_path):
    models = tmp_path / "models"
    argv = ["train", "--quick", "--threads", "1", "--out", str(models), "--fields", FIELDS,
            "--label", "clicked", *build(tmp_path), *options]  # fmt: skip
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    message = stopped.value.code
    assert isinstance(message, str), message  # a message, so the exit status is 1
    for part in named:
        assert part in message, message
    assert not models.exists() or not any(models.iterdir())  # nothing published


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        (["--split", "0.8,0.3,0.1"], "three shares above 0 that sum to 1"),
        (["--split", "0.8,0.2"], "three shares"),
        (["--split", "a,b,c"], "three numbers"),
    ],
)
def test_bad_split_fractions_stop_at_parsing(options, problem, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--data", "clicks.csv", "--fields", FIELDS, *options])
    assert stopped.value.code == 2
    assert f"argument --split: {problem}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        (["--split-by", "ts"], "--split-by splits --data"),
        (["--split", "0.6,0.2,0.2"], "--split splits --data"),
        (["--data", "x.csv", "--dataset", "frappe"], "not --dataset frappe"),
        (["--positive-label", "yes"], "--positive-label is for your own data"),
        (["--delimiter", ";", "--dataset", "ml-100k"], "--delimiter is for your own data"),
    ],
)
def test_own_data_options_without_own_data_are_refused(options, problem):
    with pytest.raises(SystemExit, match=problem):
        main(["train", "--quick", *options])
