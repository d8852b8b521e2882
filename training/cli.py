"""Command line: `python -m training train|tune|evaluate|predict|promote|reproduce|make-data` (see `--help`).

The options are documented in docs/training.md; `--help` gives one line each.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from training import commands, recipes
from training.commands import DEFAULT_WEIGHT_DECAY, DataOptions, TrainOptions

# --quick: a tiny run that exercises every step; options given explicitly still win
QUICK = {"max_rows": 2000, "epochs": 1, "embedding_dim": 8, "attention_dim": 8}


def bounded(
    kind: type,
    low: float,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = True,
) -> Callable[[str], Any]:
    """An argparse type for `kind` values from `low` to `high` (None: no upper end), each end
    left out when open: a bad option stops at once with its name, not later in torch with a
    traceback (or, for --max-rows 0, as no cap at all)."""

    def parse(text: str) -> Any:
        value = kind(text)
        too_low = value <= low if low_open else value < low
        too_high = high is not None and (value >= high if high_open else value > high)
        if high is None and too_low:
            raise argparse.ArgumentTypeError(
                f"must be {'above' if low_open else 'at least'} {low}, not {text}"
            )
        if too_low or too_high:
            left, right = "(" if low_open else "[", ")" if high_open else "]"
            raise argparse.ArgumentTypeError(f"must be in {left}{low}, {high}{right}, not {text}")
        return value

    parse.__name__ = kind.__name__  # argparse's "invalid int value: 'x'" names the kind
    return parse


positive_int, non_negative_int = bounded(int, 1), bounded(int, 0)
positive_float, non_negative_float, dropout_rate = (
    bounded(float, 0.0, low_open=True),
    bounded(float, 0.0),
    bounded(float, 0.0, 1.0),
)
# --lr-decay: a factor in (0, 1], 1 meaning a constant rate
decay_factor = bounded(float, 0, 1, low_open=True, high_open=False)


def split_fractions(text: str) -> tuple[float, float, float]:
    """`0.8,0.1,0.1`: the train, validation and test shares, each above 0, summing to 1."""
    try:
        parts = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"three numbers like 0.8,0.1,0.1, not {text}") from None
    if len(parts) != 3 or min(parts) <= 0 or abs(sum(parts) - 1) > 1e-6:
        raise argparse.ArgumentTypeError(
            f"three shares above 0 that sum to 1, like 0.8,0.1,0.1, not {text}"
        )
    return parts[0], parts[1], parts[2]


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default after its help, except a None default (its help says what it is)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser(quick: bool = False) -> argparse.ArgumentParser:
    """The parser of every command; `quick` makes QUICK the train defaults."""
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    formatter = Formatter
    train = commands.add_parser(
        "train", help="train AFM or FM and publish a bundle", formatter_class=formatter
    )
    add_train_options(train)
    if quick:
        train.set_defaults(**QUICK)

    tune = commands.add_parser(
        "tune",
        help="search train's settings with Optuna (TPE, pruning on validation); publish the best",
        description="Trial 0 trains with the options as given; later trials sample --lr,"
        " --batch-size, --embedding-dim, --attention-dim, --dropout, --l2-attention and"
        " --weight-decay. The best trial on validation is published with the search in its"
        " bundle (docs/training.md).",
        formatter_class=formatter,
    )
    add_train_options(tune, starts=False)
    tune.add_argument(
        "--trials", type=positive_int, default=20, help="most trials, trial 0 included"
    )
    tune.add_argument(
        "--timeout", type=positive_float, metavar="SECONDS",
        help="start no trial after this many seconds (default: no limit)",
    )  # fmt: skip

    evaluate = commands.add_parser(
        "evaluate",
        help="score a data split with a bundle through onnxruntime only (no torch)",
        formatter_class=formatter,
    )
    evaluate.add_argument(
        "--bundle", type=Path, required=True, help="bundle folder, e.g. models/frappe-afm/1"
    )
    add_data_options(evaluate)
    evaluate.add_argument(
        "--split", choices=["train", "validation", "test", "all"],
        help="rows to score (default: all of --data, else test)",
    )  # fmt: skip

    predict = commands.add_parser(
        "predict",
        help="score a CSV or Parquet file into Parquet, streaming, through onnxruntime only",
        formatter_class=formatter,
    )
    predict.add_argument("--bundle", type=Path, required=True, help="bundle folder")
    predict.add_argument(
        "--data", type=Path, required=True, metavar="PATH",
        help="CSV or Parquet file, or a directory of them, with the bundle's fields",
    )  # fmt: skip
    predict.add_argument("--out", type=Path, required=True, help="Parquet file to write")
    predict.add_argument(
        "--batch-size", type=positive_int, default=8192, help="rows read and scored at a time"
    )
    predict.add_argument(
        "--explain", action="store_true", help="add each row's top pairs by |contribution|"
    )
    predict.add_argument(
        "--top-k", type=positive_int, default=3, help="with --explain: pairs per row"
    )
    predict.add_argument(
        "--keep", action="append", metavar="COLUMN",
        help="copy this input column into the output (repeatable), e.g. an id",
    )  # fmt: skip
    predict.add_argument(
        "--delimiter", metavar="CHAR", help="CSV delimiter (default: detected among , ; tab |)"
    )

    promote = commands.add_parser(
        "promote",
        help="make a published version the one served (models/<name>/promoted.json)",
        formatter_class=formatter,
    )
    promote.add_argument("name", help="model name, e.g. frappe-afm")
    promote.add_argument("version", type=positive_int, help="published version to serve")
    promote.add_argument("--models-dir", type=Path, default=Path("models"), help="models directory")
    promote.add_argument("--by", help="who promotes it (default: the current user)")

    reproduce = commands.add_parser(
        "reproduce",
        help="the paper's frappe result: FM, then AFM from FM's embeddings; prints test RMSE",
        formatter_class=formatter,
    )
    reproduce.add_argument(
        "--data-dir", type=Path, help="folder holding frappe/ (default: as for train)"
    )
    reproduce.add_argument("--out", type=Path, default=Path("models"), help="models directory")
    reproduce.add_argument(
        "--threads", type=non_negative_int, default=0, help="CPU threads (0: PyTorch's default)"
    )
    reproduce.add_argument(
        "--device", default="cpu", help="cpu, or cuda (cuda:N) where there is one"
    )
    reproduce.add_argument(
        "--download", action="store_true", help="train on the authors' libFM files, fetched"
    )
    reproduce.add_argument(
        "--negatives",
        choices=["paper", "file"],
        default="paper",
        help="training negatives: paper (--paper-negatives), file (--drop-used-negatives)",
    )
    reproduce.add_argument("--seed", type=non_negative_int, default=0, help="the models' seed")

    make_data = commands.add_parser(
        "make-data",
        help="generate a data set as Parquet shards: criteo-like (Criteo's 39 fields, planted"
        " pairs, each row's true click probability in `_oracle`)",
        formatter_class=formatter,
    )
    make_data.add_argument("kind", choices=["criteo-like"], help="the data set to generate")
    make_data.add_argument("--rows", type=positive_int, required=True, help="rows in all")
    make_data.add_argument(
        "--shards", type=positive_int, default=1, help="Parquet files, near equal in rows"
    )
    make_data.add_argument("--out", type=Path, required=True, help="directory to write")
    make_data.add_argument("--seed", type=non_negative_int, default=0, help="the rows' seed")
    make_data.add_argument(
        "--world-seed", type=non_negative_int, default=0,
        help="the seed of the model behind the labels: another --seed of the same world is a"
        " held-out set",
    )  # fmt: skip
    make_data.add_argument(
        "--row-group-rows", type=positive_int, default=100_000,
        help="rows generated and written at a time: memory grows with it, not with --rows",
    )  # fmt: skip
    return parser


def add_train_options(train: argparse.ArgumentParser, starts: bool = True) -> None:
    """`train`'s options; `starts` False leaves out those that start from a published model
    (and --quick), as `tune` trains from scratch."""
    default = TrainOptions()
    add_data_options(train)
    train.add_argument(
        "--model", choices=["afm", "fm"], default=default.model, help="AFM, or FM (no attention)"
    )
    train.add_argument(
        "--out", type=Path, default=default.out, help="models directory to publish into"
    )
    train.add_argument(
        "--name", help="bundle name (default: <dataset>-<model>, or <--data name>-<model>)"
    )
    train.add_argument(
        "--split", dest="split_fractions", type=split_fractions, metavar="FRACTIONS",
        help="--data: train,validation,test shares (default: 0.8,0.1,0.1)",
    )  # fmt: skip
    train.add_argument(
        "--split-by", metavar="COLUMN",
        help="--data: split by this column's order (e.g. time), the last rows tested",
    )  # fmt: skip
    train.add_argument(
        "--embedding-dim", type=positive_int, default=default.embedding_dim, help="k, the embedding size"
    )  # fmt: skip
    train.add_argument(
        "--attention-dim", type=positive_int, default=default.attention_dim,
        help="t, the attention network's hidden size",
    )  # fmt: skip
    train.add_argument(
        "--dropout", type=dropout_rate, default=default.dropout,
        help="dropout on the pair-interaction layer",
    )  # fmt: skip
    train.add_argument(
        "--l2-attention", type=non_negative_float, default=default.l2_attention,
        help="L2 weight on the attention network's W",
    )  # fmt: skip
    train.add_argument(
        "--attention-lr", type=positive_float,
        help="learning rate of the attention network's W and b (default: --lr)",
    )  # fmt: skip
    train.add_argument(
        "--weight-decay", type=non_negative_float, default=default.weight_decay,
        help=f"L2 on every parameter (optimizer weight decay; default {DEFAULT_WEIGHT_DECAY:g},"
        " 0 with --sparse-embeddings)",
    )  # fmt: skip
    train.add_argument(
        "--batch-norm", action="store_true",
        help="FM only: batch norm while training, folded away before export",
    )  # fmt: skip
    train.add_argument("--optimizer", choices=["adam", "adagrad"], default=default.optimizer)
    train.add_argument("--lr", type=positive_float, default=default.lr, help="learning rate")
    train.add_argument(
        "--batch-size", type=positive_int,
        help="rows per step (default: training rows / 20, from 16 to 1024)",
    )  # fmt: skip
    train.add_argument(
        "--epochs", type=positive_int, default=default.epochs,
        help="most epochs; early stopping may end sooner",
    )  # fmt: skip
    train.add_argument(
        "--patience", type=positive_int, default=default.patience,
        help="epochs without validation improvement before stopping",
    )  # fmt: skip
    train.add_argument(
        "--lr-decay", type=decay_factor, default=default.lr_decay,
        help="multiply the rate by this when validation stops improving (1: constant)",
    )  # fmt: skip
    train.add_argument(
        "--lr-decay-patience", type=positive_int, default=default.lr_decay_patience,
        help="epochs without validation improvement before each --lr-decay",
    )  # fmt: skip
    train.add_argument(
        "--device", default=default.device, help="cpu, or cuda (cuda:N) where there is one"
    )
    train.add_argument(
        "--threads", type=non_negative_int, default=default.threads,
        help="CPU threads for PyTorch (0: its default)",
    )  # fmt: skip
    if not starts:
        return
    train.add_argument(
        "--init-from", type=Path,
        help="a published bundle to start from (an FM's: the paper's pre-training)",
    )  # fmt: skip
    train.add_argument(
        "--warm-start", type=Path, metavar="BUNDLE",
        help="continue a published model on new rows of its fields, vocabularies grown",
    )  # fmt: skip
    train.add_argument(
        "--freeze-embeddings", action="store_true",
        help="with --init-from: keep w0, w and v fixed; learn the attention network and p",
    )  # fmt: skip
    train.add_argument(
        "--fm-start", choices=["exact", "authors"], default=default.fm_start,
        help="with --init-from an FM: start AFM as the FM predicts, or as the authors' code",
    )  # fmt: skip
    train.add_argument(
        "--quick", action="store_true", help="a tiny run (2,000 rows, 1 epoch, k=8) of every step"
    )
    train.add_argument(
        "--min-count", type=positive_int, default=default.min_count,
        help="categorical values seen fewer times in training share the OOV slot (a field's own"
        " count, city:categorical:5, wins when larger)",
    )  # fmt: skip
    train.add_argument(
        "--max-vocabulary", type=positive_int, metavar="N",
        help="each categorical field keeps at most its N most frequent values",
    )  # fmt: skip
    train.add_argument(
        "--sparse-embeddings", action="store_true",
        help="sparse gradients for the embedding tables (SparseAdam, or sparse Adagrad): a step"
        " costs the rows it uses, not the table",
    )  # fmt: skip
    train.add_argument(
        "--stream", action="store_true",
        help="--data: read the files in record batches, never whole (Parquet or CSV); vocabularies"
        " in one pass, training rows through a shuffle buffer",
    )  # fmt: skip
    train.add_argument(
        "--shuffle-rows", type=positive_int, default=default.shuffle_rows,
        help="--stream: rows of the shuffle buffer",
    )  # fmt: skip
    train.add_argument(
        "--resume", action="store_true",
        help="go on from the run's last checkpoint (<--out>/.checkpoints/<name>, written each"
        " epoch): the same options, more --epochs allowed",
    )  # fmt: skip
    # the tests' interruption: stop after this epoch's checkpoint, as a run killed there
    train.add_argument("--interrupt-after", type=positive_int, help=argparse.SUPPRESS)


def add_data_options(parser: argparse.ArgumentParser) -> None:
    from training.data import DATASETS

    default = DataOptions()
    parser.add_argument(
        "--dataset", choices=DATASETS,
        help="synthetic (the default) is generated; frappe, ml-100k: from --data-dir;"
        " files: --data or --train etc. (--data alone selects it)",
    )  # fmt: skip
    parser.add_argument(
        "--data",
        type=Path,
        metavar="PATH",
        help="your own CSV or Parquet file, or a directory of them",
    )
    parser.add_argument(
        "--task", choices=["ctr", "rating"], default=default.task,
        help="ctr: 0/1 labels, log loss; rating: squared loss, RMSE",
    )  # fmt: skip
    parser.add_argument(
        "--data-dir", type=Path,
        help="folder holding frappe/ and ml-100k/ (default: AFM_DATA_DIR or ../shared/data)",
    )  # fmt: skip
    parser.add_argument(
        "--format", dest="data_format", choices=["csv", "libfm"], default=default.data_format,
        help="frappe: the named CSV or the paper's libFM files",
    )  # fmt: skip
    parser.add_argument(
        "--download", action="store_true", help="download missing files, checked, from their source"
    )
    parser.add_argument(
        "--drop-used-negatives", action="store_true",
        help="frappe: drop training negatives that pair a user with an app they use",
    )  # fmt: skip
    parser.add_argument(
        "--paper-negatives", action="store_true",
        help="frappe: draw the training negatives from raw/frappe.csv as the paper did",
    )  # fmt: skip
    parser.add_argument(
        "--max-rows", type=positive_int, help="use at most this many rows of each split"
    )
    parser.add_argument(
        "--seed", type=non_negative_int, default=default.seed,
        help="seeds the split, the initialisation and the shuffling",
    )  # fmt: skip
    parser.add_argument(
        "--fields", help="files: the feature spec, e.g. user,item,age:numeric,city:categorical:5"
    )
    parser.add_argument("--label", help="files: the label column (default: label)")
    parser.add_argument(
        "--positive-label", metavar="VALUE",
        help="files, ctr: the label value that means a click (others: 0)",
    )  # fmt: skip
    parser.add_argument(
        "--delimiter",
        metavar="CHAR",
        help="files: the CSV delimiter (default: detected among , ; tab |)",
    )
    parser.add_argument("--train", type=Path, help="files: training CSV or Parquet")
    parser.add_argument("--validation", type=Path, help="files: validation CSV or Parquet")
    parser.add_argument("--test", type=Path, help="files: test CSV or Parquet")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.command == "train" and args.quick:
        args = build_parser(quick=True).parse_args(argv)
    return args


def data_options(args: argparse.Namespace) -> DataOptions:
    """The data options of `train` or `evaluate`; `--data` alone selects --dataset files."""
    if args.data is not None and args.dataset not in (None, "files"):
        sys.exit(f"--data is your own data (--dataset files), not --dataset {args.dataset}")
    default = DataOptions()
    if args.data is None:
        for option in ("split_fractions", "split_by"):
            if getattr(args, option, None) is not None:
                sys.exit(f"--{option.replace('_fractions', '').replace('_', '-')} splits --data")
    values: dict[str, Any] = {f.name: getattr(args, f.name, None) for f in fields(DataOptions)}
    values["dataset"] = args.dataset or ("files" if args.data is not None else default.dataset)
    values["split_fractions"] = values["split_fractions"] or default.split_fractions
    return DataOptions(**values)


def train_options(args: argparse.Namespace) -> TrainOptions:
    """The `train` command's options, from its parsed command line."""
    names = [f.name for f in fields(TrainOptions) if f.name != "data"]
    given = {n: getattr(args, n) for n in names if hasattr(args, n)}  # tune has fewer
    return TrainOptions(data=data_options(args), **given)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "train":
        commands.train(train_options(args))
    elif args.command == "tune":
        from training import tune  # optuna loads only here

        tune.tune(train_options(args), args.trials, args.timeout)
    elif args.command == "evaluate":
        commands.evaluate(args.bundle, data_options(args), args.split)
    elif args.command == "predict":
        commands.predict(
            args.bundle, args.data, args.out, args.batch_size, args.explain, args.top_k,
            tuple(args.keep or ()), args.delimiter,
        )  # fmt: skip
    elif args.command == "promote":
        commands.promote(args.models_dir, args.name, args.version, args.by)
    elif args.command == "make-data":
        from training.data import criteo_like

        made = criteo_like.write(
            args.out, args.rows, args.shards, args.seed, args.world_seed, args.row_group_rows
        )
        print(
            f"wrote {made.rows:,} rows in {len(made.files)} shards to {args.out} in"
            f" {made.seconds:.1f}s ({made.rows / made.seconds:,.0f} rows/s); clicks"
            f" {made.clicks / made.rows:.3f}, mean true probability {made.mean_oracle:.3f};"
            f" train with --data {args.out} --fields {criteo_like.suggested_fields()}",
            flush=True,
        )
    else:
        recipe = recipes.frappe(
            args.out, args.seed, args.threads, args.device, args.data_dir, args.download,
            args.negatives,
        )  # fmt: skip
        commands.reproduce(recipe)
