"""The commands: `train` one model and publish its bundle, `evaluate` a bundle without torch,
`predict` a file's scores without torch, `promote` a published version to be served,
`reproduce` a recipe (an FM, then an AFM started from it).

Each takes typed values (`TrainOptions`, `DataOptions`, a `Recipe`), not the parsed command line.
torch is imported where a model is trained, so `evaluate` runs without it.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from training.bundle import Bundle, Manifest
    from training.bundle.features import FeatureEncoder
    from training.data import Splits
    from training.data.splits import SplitPlan
    from training.distributed import World
    from training.model import AFM
    from training.recipes import Recipe
    from training.trainer import BatchSource, History, Tensors, TrainConfig

Split = Literal["train", "validation", "test", "all"]
# the batch size when --batch-size is not given: at least MIN_STEPS steps per epoch where the
# training rows allow, never more than MAX_BATCH rows, never fewer than MIN_BATCH
MIN_STEPS, MIN_BATCH, MAX_BATCH = 20, 16, 1024
# L2 on every parameter unless --weight-decay says otherwise: without it a team's log with many
# users and items overfits their pairs within a few epochs (docs/experiments/own-data.md)
DEFAULT_WEIGHT_DECAY = 1e-4


@dataclass(frozen=True)
class DataOptions:
    """Which data set, task and rows (`train` and `evaluate` share these)."""

    dataset: str = "synthetic"  # synthetic | frappe | ml-100k | files
    task: Literal["ctr", "rating"] = "ctr"
    data_dir: Path | None = None  # None: training.data.default_data_dir()
    data_format: Literal["csv", "libfm"] = "csv"  # frappe only
    download: bool = False
    drop_used_negatives: bool = False  # frappe only
    paper_negatives: bool = False  # frappe only
    max_rows: int | None = None  # at most this many rows of each split
    seed: int = 0  # the split (synthetic, ml-100k, --data), the initialisation and the shuffling
    fields: str | None = None  # files: the feature spec, e.g. "user,item,age:numeric"
    label: str | None = None  # files: the label column (None: "label", or the bundle's)
    data: Path | None = None  # files: one CSV or Parquet file or directory, split here
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # --data: train, valid, test
    split_by: str | None = None  # --data: order rows by this column, the last ones tested
    delimiter: str | None = None  # files: the CSV delimiter (None: detected)
    positive_label: str | None = None  # files, ctr: the label value that means a click
    train: Path | None = None  # files: the three splits
    validation: Path | None = None
    test: Path | None = None


@dataclass(frozen=True)
class TrainOptions:
    """Everything `train` needs: the data, the model, the optimisation, where to publish."""

    data: DataOptions = field(default_factory=DataOptions)
    model: Literal["afm", "fm"] = "afm"
    out: Path = Path("models")
    name: str | None = None  # None: <dataset>-<model>
    embedding_dim: int = 64
    attention_dim: int = 64
    dropout: float = 0.3
    l2_attention: float = 0.0
    attention_lr: float | None = None  # None: lr
    weight_decay: float | None = None  # None: DEFAULT_WEIGHT_DECAY, or 0 with sparse_embeddings
    batch_norm: bool = False  # FM only; folded into v, p and w0 after training
    optimizer: Literal["adam", "adagrad"] = "adam"
    lr: float = 5e-3
    batch_size: int | None = None  # None: auto_batch_size of the training rows
    epochs: int = 20
    patience: int = 3
    lr_decay: float = 1.0  # 1: a constant rate
    lr_decay_patience: int = 2
    device: str = "cpu"
    threads: int = 0  # 0: PyTorch's default
    init_from: Path | None = None  # a published bundle whose weights start this model
    warm_start: Path | None = None  # a published bundle continued on this data, vocabularies grown
    freeze_embeddings: bool = False
    fm_start: Literal["exact", "authors"] = "exact"
    min_count: int = 1  # categorical values seen fewer times share the OOV slot
    max_vocabulary: int | None = None  # each categorical field keeps its most frequent values
    sparse_embeddings: bool = False  # the tables' gradients sparse, with SparseAdam or Adagrad
    stream: bool = False  # --data read in record batches, never whole (training.data.stream)
    shuffle_rows: int = 100_000  # --stream: rows of the shuffle buffer
    resume: bool = False  # go on from the run's last checkpoint (training.checkpoint)
    interrupt_after: int | None = None  # tests: stop after this epoch's checkpoint, unpublished

    def resolved_weight_decay(self) -> float:
        """`weight_decay` as given, else DEFAULT_WEIGHT_DECAY; 0 with sparse embeddings, whose
        optimizers (SparseAdam, sparse Adagrad) take none."""
        if self.weight_decay is not None:
            return self.weight_decay
        return 0.0 if self.sparse_embeddings else DEFAULT_WEIGHT_DECAY


def split_plan(data: DataOptions) -> SplitPlan:
    """How `--data` is split: by a column's order (`split_by`), else at random by `seed`."""
    from training.data.splits import SplitPlan

    if data.split_by is not None:
        return SplitPlan("by_column", data.split_fractions, column=data.split_by)
    return SplitPlan("random", data.split_fractions, seed=data.seed)


def load_splits(data: DataOptions, plan: SplitPlan | None = None) -> Splits:
    """The data set's splits, or a message for the user (not a traceback). `plan` splits `--data`
    (default: `split_plan(data)`)."""
    from training import data as datasets
    from training.data import checks, files

    for option in ("drop_used_negatives", "paper_negatives"):
        if getattr(data, option) and data.dataset != "frappe":
            sys.exit(f"--{option.replace('_', '-')} is for --dataset frappe")
    if data.positive_label is not None and data.task != "ctr":
        sys.exit("--positive-label is for --task ctr: a rating label is a number")
    if data.dataset != "files":
        for option in ("data", "delimiter", "positive_label", "split_by"):
            if getattr(data, option) is not None:
                sys.exit(f"--{option.replace('_', '-')} is for your own data (--data)")
    try:
        if data.dataset == "files":
            pre_split = data.train or data.validation or data.test
            if data.data is not None and pre_split:
                sys.exit(
                    "--data is split for you; --train, --validation and --test are files split"
                    " already: pass one or the other"
                )
            if not data.fields:
                sys.exit("your own data needs --fields, e.g. --fields user,item,price:numeric")
            spec = checks.parse_fields(data.fields, data.label or "label")
            if data.data is not None:
                return files.load_source(
                    data.task, spec, data.data, plan or split_plan(data), data.delimiter,
                    data.positive_label, data.max_rows,
                )  # fmt: skip
            if not (data.train and data.validation and data.test):
                sys.exit(
                    "--dataset files needs --fields and --data (one file or directory, split for"
                    " you) or --train, --validation and --test"
                )
            return files.load(
                data.task, spec, data.train, data.validation, data.test, data.delimiter,
                data.positive_label,
            )  # fmt: skip
        return datasets.load(
            data.dataset,
            data.task,
            data.data_dir,
            data.data_format,
            data.max_rows,
            data.seed,
            data.download,
            data.drop_used_negatives,
            data.paper_negatives,
        )
    except (FileNotFoundError, ValueError) as problem:
        sys.exit(str(problem))


def auto_batch_size(train_rows: int) -> int:
    """Rows per step when --batch-size is not given: about MIN_STEPS steps per epoch on small
    data (1,400 rows at 1024 would be 2 steps an epoch), at most MAX_BATCH on large data."""
    return max(MIN_BATCH, min(MAX_BATCH, train_rows // MIN_STEPS))


def summary(
    history: History, epochs: int, patience: int, metric: str, test: dict[str, float],
    path: Path, started_from: bool,
) -> str:  # fmt: skip
    """What a finished run tells the user: the best epoch, why it stopped, the test metrics and
    where the bundle is."""
    ran, best = len(history.epochs), history.best_epoch
    valid = history.best.get(metric, float("nan"))
    if best == 0 and started_from:
        chosen = (
            f"no epoch beat the start (--init-from, valid {metric} {valid:.4f}): it is published"
        )
    else:
        chosen = f"best epoch {best} of {ran} (valid {metric} {valid:.4f})"
    if ran < epochs:
        why = f"stopped early: no better valid {metric} for {patience} epochs (--patience)"
    elif ran and best == ran:
        why = (
            f"stopped at the epoch cap (--epochs {epochs}) while valid {metric} was still"
            " improving: more --epochs or a higher --lr may do better"
        )
    else:
        why = f"ran all {epochs} epochs (--epochs); valid {metric} last improved at epoch {best}"
    scores = "  ".join(f"{k} {v:.4f}" for k, v in test.items())
    return f"summary: {chosen}\n  {why}\n  test: {scores}\n  bundle: {path}"


def read_bundle(path: Path, option: str) -> Bundle:
    """A verified bundle, or a message naming the option and what is wrong (not a traceback)."""
    from training import bundle

    try:
        return bundle.read(path)
    except bundle.BundleError as problem:
        sys.exit(f"{option}: {problem}")


def read_checkpoint(path: Path) -> AFM:
    """The PyTorch model of a bundle, which a served bundle need not carry (checkpoint.pt)."""
    from training import export

    try:
        return export.load_checkpoint(path)
    except FileNotFoundError:
        sys.exit(f"--init-from: {path} has no checkpoint.pt, so no weights to start from")


def require_same_fields(bundle_fields: list[str], data_fields: list[str], option: str) -> None:
    """Stop with both field lists when a bundle meets a data set of other fields (not KeyError)."""
    if bundle_fields != data_fields:
        sys.exit(
            f"{option}: that bundle's fields ({', '.join(bundle_fields)}) are not this data"
            f" set's ({', '.join(data_fields)})"
        )


def trained_on(manifest: Manifest, splits: Splits) -> bool:
    """Whether a bundle was trained on exactly these splits (same files, split seed, row cap)."""
    return manifest.data is not None and manifest.data.fingerprint == splits.fingerprint


def require_same_data(manifest: Manifest, splits: Splits, task: str) -> None:
    """--init-from is the paper's pre-training on the same split: a start trained on other rows
    (another split seed, say) has seen this run's test rows, and its test RMSE would say nothing.
    The vocabularies come from the start too, so other data would mostly fall to OOV."""
    if manifest.task != task:
        sys.exit(f"--init-from: that bundle was trained for --task {manifest.task}, not {task}")
    if not trained_on(manifest, splits):
        dataset, fingerprint = (
            (manifest.data.dataset, manifest.data.fingerprint) if manifest.data else (None, None)
        )
        sys.exit(
            f"--init-from: that bundle was trained on other data ({dataset},"
            f" fingerprint {str(fingerprint)[:12]}) than this run's"
            f" ({splits.name}, {splits.fingerprint[:12]}): use the data options of the run that"
            " trained it (data set and format, negatives, --max-rows, --seed where it draws the"
            " split)"
        )


def require_device(name: str) -> None:
    """Stop before any data loads when --device names no device this torch can train on.

    Otherwise the first batch dies in torch's lazy CUDA init with an AssertionError traceback.
    """
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        sys.exit(f"--device {name}: not a device; use cpu, cuda or cuda:N")
    if device.type == "cpu":
        return
    if device.type != "cuda":
        sys.exit(f"--device {name}: training runs on cpu or cuda[:N]")
    if not torch.cuda.is_available():
        sys.exit(f"--device {name}: torch {torch.__version__} sees no CUDA device here; use cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        sys.exit(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices here")


def train(options: TrainOptions) -> Path:
    """Train one model (from scratch, from `init_from`'s weights, or continuing `warm_start` on
    new rows) and publish its bundle."""
    import torch

    from training import distributed
    from training.checkpoint import ResumeError

    require_device(options.device)
    if options.sparse_embeddings and options.resolved_weight_decay():
        sys.exit(
            f"--weight-decay {options.weight_decay:g} with --sparse-embeddings: SparseAdam and"
            " sparse Adagrad take no weight decay (leave it out, or give 0)"
        )
    if options.threads:
        torch.set_num_threads(options.threads)
    world, device = distributed.start(options.device)
    options = replace(options, device=device)
    if world.distributed:
        print(f"{distributed.describe(world, device)}", flush=True)
    try:
        require_world(options, world)
        if options.stream:
            return train_stream(options, world)
        return train_in_memory(options, world)
    except ResumeError as problem:
        sys.exit(str(problem))
    finally:
        distributed.stop()


def require_world(options: TrainOptions, world: World) -> None:
    """Stop on what a torchrun launch of `world.size` processes cannot train."""
    from training import distributed

    if not world.distributed:
        return
    if options.batch_size is not None and options.batch_size % world.size:
        sys.exit(
            f"--batch-size {options.batch_size} is the global batch of {world.size} processes:"
            f" give a multiple of {world.size}"
        )
    if options.sparse_embeddings and distributed.backend_for(options.device) == "nccl":
        sys.exit(
            "--sparse-embeddings with several CUDA processes: NCCL has no all-reduce of sparse"
            " gradients (gloo on CPU has): train on --device cpu, or without --sparse-embeddings"
        )


def global_batch_size(options: TrainOptions, train_rows: int, world: World) -> int:
    """--batch-size, else auto_batch_size's, cut to a multiple of the processes (each rank takes
    an equal share of a step)."""
    if options.batch_size is not None:
        return options.batch_size
    size = auto_batch_size(train_rows)
    return max(world.size, size - size % world.size)


def checkpoint_options(options: TrainOptions, name: str) -> dict[str, Any]:
    """fit's checkpoint arguments: a checkpoint each epoch under --out, --resume from it."""
    from training import checkpoint

    return {
        "checkpoint_path": checkpoint.path_for(options.out, name),
        "resume": options.resume,
        "interrupt_after": options.interrupt_after,
    }


def finish(history: History, options: TrainOptions, name: str, world: World) -> bool:
    """Whether this process publishes: rank 0 of a run that was not interrupted. The others
    wait at a barrier until rank 0 has published."""
    from training import checkpoint

    if history.interrupted:
        if world.is_zero:
            print(
                f"{name}: stopped after epoch {options.interrupt_after} (--interrupt-after);"
                f" --resume goes on from {checkpoint.path_for(options.out, name)}",
                flush=True,
            )
        return False
    return world.is_zero


def train_in_memory(options: TrainOptions, world: World) -> Path:
    """Train on splits read whole into memory (every rank holds them; each trains on its share
    of each global batch, `distributed.RankShare`)."""
    import torch

    from training import distributed, export, metrics
    from training.bundle.features import FeatureEncoder
    from training.trainer import fit

    data = options.data
    # seeded before the model is built: a run started from a bundle is the same model
    # whichever run published that bundle
    torch.manual_seed(data.seed)
    started = time.perf_counter()
    start = read_bundle(options.init_from, "--init-from") if options.init_from else None
    parent = read_bundle(options.warm_start, "--warm-start") if options.warm_start else None
    if parent is not None:
        if start is not None or options.freeze_embeddings:
            sys.exit("--warm-start continues a model: not with --init-from or --freeze-embeddings")
        if parent.task != data.task:
            sys.exit(f"--warm-start: that bundle was trained for --task {parent.task}")
        if data.dataset == "files":
            data = bundle_data(parent.manifest, data)
    splits = load_splits(data)
    init = None
    warm = None
    if parent is not None:
        from training import warm_start

        require_same_fields(parent.encoder.names, splits.spec.names, "--warm-start")
        try:
            grown = warm_start.grow_encoder(
                parent.encoder, FeatureEncoder.fit(splits.spec, splits.train.columns)
            )
        except ValueError as problem:
            sys.exit(f"--warm-start: {problem}")
        try:
            warm = warm_start.start_model(
                export.load_checkpoint(parent.path), grown, options.dropout
            )
        except FileNotFoundError:
            sys.exit(f"--warm-start: {parent.path} has no checkpoint.pt, so no weights to go on")
        encoder = grown.encoder
        new = ", ".join(f"{n} {k:,}" for n, k in grown.added.items() if k) or "none"
        print(f"warm start from {parent.name}/{parent.version}: new values {new}", flush=True)
    elif start is not None:
        init = read_checkpoint(start.path)
        require_same_fields(start.encoder.names, splits.spec.names, "--init-from")
        require_same_data(start.manifest, splits, data.task)
        encoder = start.encoder
    else:
        from training.data.stream import capped, with_min_count

        spec = with_min_count(splits.spec, options.min_count)
        encoder = capped(FeatureEncoder.fit(spec, splits.train.columns), options.max_vocabulary)

    train_data, valid_data, test_data = encode_splits(encoder, splits)
    name = options.name or (parent.name if parent else default_name(data, splits, options.model))
    batch_size = global_batch_size(options, len(train_data), world)
    if options.batch_size is None:
        steps = math.ceil(len(train_data) / batch_size)
        print(
            f"batch size {batch_size}: {steps} steps per epoch over {len(train_data):,} training"
            " rows (--batch-size sets it)",
            flush=True,
        )
    if options.batch_norm and options.model != "fm":
        sys.exit("--batch-norm is for --model fm (AFM has none)")
    model = warm or new_model(options, encoder, splits)
    if init is not None:
        if (
            init.config.num_features != encoder.num_features
            or init.config.embedding_dim != options.embedding_dim
        ):
            sys.exit(
                "--init-from: that bundle's vocabularies or embedding size differ from this model's"
            )
        both_afm = init.config.attention and model.config.attention  # then all weights carry over
        if both_afm and init.config.attention_dim != options.attention_dim:
            sys.exit("--init-from: that AFM bundle's attention size differs from this model's")
        model.load_fm_embeddings(init, options.fm_start)
        if options.freeze_embeddings:
            model.freeze_fm_parameters()
    cfg = train_config(options, data, batch_size, splits.label_range)

    # a model started from a trained one is published as that start if no epoch beats it
    started_from = init is not None or warm is not None
    share = distributed.RankShare(train_data, world) if world.distributed else train_data
    history = fit(
        model, share, valid_data, cfg, name, start_is_candidate=started_from, world=world,
        **checkpoint_options(options, name),
    )  # fmt: skip
    path = options.out / name
    with distributed.rank_zero_first(world):
        if finish(history, options, name, world):
            path, test_metrics = publish_trained(
                model, encoder, splits, (train_data, valid_data, test_data), cfg, history,
                options, name, parent,
            )  # fmt: skip
            metric, _ = metrics.main_metric(cfg.task)
            print(
                summary(
                    history, cfg.epochs, cfg.patience, metric, test_metrics, path, started_from
                ),
                flush=True,
            )
            print(f"done in {time.perf_counter() - started:.0f}s", flush=True)
    return distributed.broadcast(world, path)


def train_stream(options: TrainOptions, world: World) -> Path:
    """Train on `--data` read as a stream (training.data.stream): vocabularies in one pass, then
    epochs of record batches through a shuffle buffer, never the whole data in memory.

    Under torchrun each rank trains on its own shard (files or row groups) and rank 0 alone makes
    the vocabulary pass, which it broadcasts: one read of the data instead of one per rank, all of
    them through the same disks at once; the other ranks would wait for the slowest pass anyway."""
    import numpy as np
    import torch

    from training import distributed, metrics
    from training.data import checks, files, stream
    from training.data.splits import SplitPlan, Splits, derived
    from training.readers import Table
    from training.trainer import fit

    data = options.data
    if data.data is None or data.dataset != "files":
        sys.exit("--stream reads your own data: --data DIR (or a file) with --fields")
    if data.split_by is not None:
        sys.exit(
            "--split-by orders every row before any is placed, which a stream cannot: split the"
            " data into --train, --validation and --test files, or use --split fractions"
        )
    for option in ("init_from", "warm_start"):
        if getattr(options, option) is not None:
            sys.exit(f"--{option.replace('_', '-')} is not for --stream: it trains from scratch")
    if data.max_rows is not None:
        sys.exit("--max-rows is not for --stream: point --data at fewer files")
    if not data.fields:
        sys.exit("your own data needs --fields, e.g. --fields user,item,price:numeric")
    if options.batch_norm and options.model != "fm":
        sys.exit("--batch-norm is for --model fm (AFM has none)")
    try:
        spec = checks.parse_fields(data.fields, data.label or "label")
        source = stream.StreamSource(
            stream.stream_files(data.data), spec, data.task, data.split_fractions, data.seed,
            data.positive_label, data.delimiter,
        )  # fmt: skip
        shard = source.shard(world.rank, world.size)
        shard.pieces()  # a CSV file per rank, else the message now
    except (FileNotFoundError, ValueError) as problem:
        sys.exit(str(problem))
    outcome: stream.StreamFit | str = "rank 0 did not fit the vocabularies"
    if world.is_zero:
        try:
            outcome = stream.fit_vocabularies(source, options.min_count, options.max_vocabulary)
        except (FileNotFoundError, ValueError) as problem:
            outcome = str(problem)
    fitted = distributed.broadcast(world, outcome)
    if isinstance(fitted, str):
        sys.exit(fitted)
    rows = fitted.rows
    if world.is_zero:
        print(
            f"vocabulary pass: {sum(rows.values()):,} rows ({rows['train']:,} train,"
            f" {rows['validation']:,} validation, {rows['test']:,} test) in"
            f" {fitted.seconds:.1f}s; {fitted.encoder.num_features:,} embedding rows",
            flush=True,
        )
    encoder = fitted.encoder
    sets = tuple(
        stream.StreamSplit(source, encoder, split, options.shuffle_rows, rows[split])
        for split in stream.SPLITS
    )
    train_share: BatchSource = sets[0]
    if world.distributed:  # this rank's shard, its rows counted from the Parquet metadata
        own = stream.StreamSplit(shard, encoder, "train", options.shuffle_rows)
        train_share = distributed.ShardBatches(own, world)
    batch_size = global_batch_size(options, rows["train"], world)
    plan = SplitPlan("random", data.split_fractions, seed=data.seed)
    fingerprint = derived(
        files.source_fingerprint(list(source.files), plan, data.positive_label), "stream"
    )
    empty = Table({}, np.empty(0, dtype=np.float32))
    described = Splits(
        "files", data.task, spec, empty, empty, empty, fitted.label_range, fingerprint, plan,
        data.positive_label,
    )  # fmt: skip
    name = options.name or default_name(data, described, options.model)
    torch.manual_seed(data.seed)  # the initial weights: a run repeats, and resumes, exactly
    model = new_model(options, encoder, described, fitted.label_mean)
    cfg = train_config(options, data, batch_size, fitted.label_range)
    history = fit(
        model, train_share, sets[1], cfg, name, world=world, **checkpoint_options(options, name)
    )
    record = {
        "dataset": "files", "fingerprint": fingerprint, "rows": rows, "split": plan.to_dict(),
        "label": spec.label, "positive_label": data.positive_label,
        "stream": stream.stream_record(source, fitted, options.shuffle_rows),
    }  # fmt: skip
    path = options.out / name
    with distributed.rank_zero_first(world):
        if finish(history, options, name, world):
            path, test_metrics = publish_trained(
                model, encoder, described, (sets[0], sets[1], sets[2]), cfg, history, options,
                name, more={"data": record},
            )  # fmt: skip
            metric, _ = metrics.main_metric(cfg.task)
            print(
                summary(history, cfg.epochs, cfg.patience, metric, test_metrics, path, False),
                flush=True,
            )
    return distributed.broadcast(world, path)


def encode_splits(encoder: FeatureEncoder, splits: Splits) -> tuple[Tensors, Tensors, Tensors]:
    """The training, validation and test tables as the model's index, value and label tensors."""
    from training.trainer import Tensors

    def tensors(table: Any) -> Tensors:
        encoded = encoder.encode(table.columns)
        return Tensors.from_numpy(encoded.index, encoded.value, table.label)

    return tensors(splits.train), tensors(splits.validation), tensors(splits.test)


def default_name(data: DataOptions, splits: Splits, model: str) -> str:
    """The bundle name when --name is not given: `<data set, or --data's name>-<model>`."""
    source = Path(data.data).stem if data.data is not None else splits.name
    return f"{source}-{model}"


def new_model(
    options: TrainOptions, encoder: FeatureEncoder, splits: Splits, label_mean: float | None = None
) -> AFM:
    """A fresh AFM (or FM) of the options' sizes for the encoder's features, its bias at the
    training labels' mean (`label_mean`, else the mean of `splits.train`'s labels)."""
    from training.model import AFM, AFMConfig

    model = AFM(
        AFMConfig(
            encoder.num_features,
            len(encoder.fields),
            options.embedding_dim,
            options.attention_dim,
            options.model == "afm",
            options.dropout,
            options.batch_norm,
        )
    )
    mean = float(splits.train.label.mean()) if label_mean is None else label_mean
    model.init_bias(mean, splits.task)
    return model


def train_config(
    options: TrainOptions, data: DataOptions, batch_size: int, label_range: tuple[float, float]
) -> TrainConfig:
    """The training loop's settings from the options (`batch_size` resolved)."""
    from training.trainer import TrainConfig

    return TrainConfig(
        task=data.task, epochs=options.epochs, batch_size=batch_size, lr=options.lr,
        optimizer=options.optimizer, l2_attention=options.l2_attention,
        attention_lr=options.attention_lr, weight_decay=options.resolved_weight_decay(),
        patience=options.patience, lr_decay=options.lr_decay,
        lr_decay_patience=options.lr_decay_patience, seed=data.seed, device=options.device,
        label_range=label_range, sparse_embeddings=options.sparse_embeddings,
    )  # fmt: skip


def publish_trained(
    model: AFM, encoder: FeatureEncoder, splits: Splits,
    sets: tuple[BatchSource, BatchSource, BatchSource], cfg: TrainConfig, history: History,
    options: TrainOptions, name: str, parent: Bundle | None = None,
    more: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, float]]:  # fmt: skip
    """Score the trained model on the test split and publish its bundle with what it was trained
    on and how (`more`: further bundle.json keys); the bundle folder and the test metrics."""
    from training import export, metrics, plots
    from training.trainer import TrainConfig, evaluate

    train_data, valid_data, test_data = sets
    model.cpu()
    test_metrics = evaluate(model, test_data, TrainConfig(**{**cfg.to_dict(), "device": "cpu"}))
    print(f"{name} test: " + "  ".join(f"{k} {v:.4f}" for k, v in test_metrics.items()), flush=True)
    mean_attention = export.mean_attention(
        model, ((b.index, b.value) for b in valid_data.batches(8192, shuffle=False))
    )
    metric, _ = metrics.main_metric(cfg.task)
    pairs = export.pair_names(model, encoder.names)

    def write_plots(folder: Path) -> None:
        plots.learning_curve(history.epochs, metric, folder / "learning_curve.png")
        plots.attention_heatmap(encoder.names, pairs, mean_attention, folder / "attention.png")

    extras = {
        "metrics": {"validation": history.best, "test": test_metrics},
        "training_config": {
            **cfg.to_dict(), "batch_norm": options.batch_norm,  # fit folds it away
            "fm_start": options.fm_start if options.init_from else None,  # AFM started from FM
            "init_from": str(options.init_from) if options.init_from else None,
            "parent": {"name": parent.name, "version": parent.version,
                       "sha256": parent.manifest.sha256} if parent else None,
        },
        "data": {
            "dataset": splits.name, "fingerprint": splits.fingerprint,
            "rows": {"train": len(train_data), "validation": len(valid_data), "test": len(test_data)},
            "split": splits.split.to_dict() if splits.split else None,
            "label": splits.spec.label, "positive_label": splits.positive_label,
        },
        "history": history.epochs,
        "best_epoch": history.best_epoch,
        "train_rows_per_second": history.train_rows_per_second,
        "artifacts": {"learning_curve": "learning_curve.png", "attention_heatmap": "attention.png"},
    } | (more or {})  # fmt: skip
    path = export.publish_bundle(
        model,
        encoder,
        options.out,
        name,
        cfg.task,
        splits.label_range,
        mean_attention,
        extras,
        write_plots,
    )
    print(f"published {path}", flush=True)
    return path, test_metrics


def bundle_data(manifest: Manifest, data: DataOptions) -> DataOptions:
    """Own data read as the bundle was trained: its fields, label and positive label, and for
    `--data` its split, unless the options name them."""
    from training.bundle.features import spec_item

    info = manifest.data
    fields = ",".join(spec_item(f) for f in manifest.fields)
    data = replace(
        data,
        task=manifest.task,
        fields=data.fields or fields,
        label=data.label or (info.label if info else None),
        positive_label=data.positive_label or (info.positive_label if info else None),
    )
    if info is not None and info.split is not None and info.split.method != "files":
        split = info.split
        data = replace(
            data,
            split_fractions=split.fractions or data.split_fractions,
            split_by=split.column,
            seed=split.seed if split.seed is not None else data.seed,
        )
    return data


def evaluate(bundle_path: Path, data: DataOptions, split: Split | None = None) -> dict[str, float]:
    """Metrics from the ONNX graph through onnxruntime: a bundle judged without torch.

    `split` None scores every row of `--data`, and the test split of a named data set."""
    from training import metrics
    from training.data import files
    from training.data.splits import SplitPlan

    loaded = read_bundle(bundle_path, "--bundle")
    data = replace(data, task=loaded.manifest.task)
    if data.dataset == "files":
        data = bundle_data(loaded.manifest, data)
    split = split or ("all" if data.data is not None else "test")
    info = loaded.manifest.data
    if data.data is not None and split == "all":
        from training.data import checks

        try:
            spec = checks.parse_fields(data.fields or "", data.label or "label")
            table, _, paths = files.read_source(
                data.task, spec, data.data, data.delimiter, data.positive_label
            )
        except ValueError as problem:
            sys.exit(str(problem))
        require_same_fields(loaded.encoder.names, spec.names, "--bundle")
        plan = SplitPlan(**info.split.model_dump()) if info and info.split else None
        if plan is not None and plan.method != "files":
            same = files.source_fingerprint(paths, plan, data.positive_label)
            if info is not None and info.fingerprint == same:
                print(
                    f"note: {data.data} is the data {bundle_path} was trained on: its training"
                    " rows are among these (--split test scores its test rows alone)",
                    file=sys.stderr,
                )
        name = str(data.data)
    else:
        if data.data is not None and (
            info is None or info.split is None or info.split.method == "files"
        ):
            sys.exit(
                f"--split {split}: {bundle_path} was not trained on data split for it;"
                " --split all scores every row of --data"
            )  # fmt: skip
        if data.data is not None and info is not None and info.stream is not None:
            sys.exit(
                f"--split {split}: {bundle_path} was trained with --stream, whose split is drawn"
                " per row as it is read; --split all scores every row of --data"
            )  # fmt: skip
        splits = load_splits(data)
        require_same_fields(loaded.encoder.names, splits.spec.names, "--bundle")
        if not trained_on(loaded.manifest, splits):  # legitimate (new data), but say so
            print(
                f"note: {bundle_path} was trained on other data than this {splits.name} split;"
                " rows it trained on may be among these",
                file=sys.stderr,
            )
        parts = [splits.train, splits.validation, splits.test]
        table = files.concat(parts) if split == "all" else getattr(splits, split)
        name = str(data.data) if data.data is not None else splits.name
    scores = loaded.score(table.columns)
    low, high = loaded.manifest.label_range
    result = metrics.compute(loaded.task, table.label, scores, (low, high))
    print(
        json.dumps(
            {"bundle": str(bundle_path), "data": name, "split": split, "rows": len(table), **result}
        )
    )
    return result


def predict(
    bundle_path: Path,
    data: Path,
    out: Path,
    batch_size: int = 8192,
    explain: bool = False,
    top_k: int = 3,
    keep: tuple[str, ...] = (),
    delimiter: str | None = None,
) -> Path:
    """Score every row of a CSV or Parquet file or directory into a Parquet file, a batch at a
    time through onnxruntime (`training.predict`); prints what it did."""
    from training import predict as scoring
    from training.data.checks import DataError

    loaded = read_bundle(bundle_path, "--bundle")
    try:
        done = scoring.score_file(loaded, data, out, batch_size, explain, top_k, keep, delimiter)
    except DataError as problem:
        sys.exit(str(problem))
    record = {"bundle": str(bundle_path), "data": str(data), "out": str(out)}
    print(json.dumps({**record, "rows": done.rows, "batches": done.batches,
                      "unknown_values": done.unknown_values}))  # fmt: skip
    return out


def promote(models_dir: Path, name: str, version: int, by: str | None = None) -> Path:
    """Write `models_dir/name/promoted.json` naming `version`, once it verifies; `by` defaults
    to the user running the command. Prints the promotion record."""
    import getpass

    from training import bundle

    try:
        who = by or getpass.getuser()
    except OSError:
        sys.exit("promote: no user name to record; give --by")
    try:
        promotion = bundle.promote(models_dir, name, version, who)
    except bundle.BundleError as problem:
        sys.exit(f"promote: {name}/{version} refused: {problem}")
    print(json.dumps(promotion.model_dump(exclude_none=True)))
    return models_dir / name / bundle.ALIAS


def reproduce(recipe: Recipe) -> tuple[Path, Path]:
    """The recipe's FM phase, then its AFM phase started from the FM bundle just published;
    prints both test scores beside the paper's. Returns the FM and AFM bundle folders."""
    from training import bundle, metrics

    fm_path = train(recipe.fm)
    afm_path = train(replace(recipe.afm, init_from=fm_path))
    metric, _ = metrics.main_metric(recipe.afm.data.task)
    print(f"\n{recipe.reference}")
    for label, path in (("FM ", fm_path), ("AFM", afm_path)):
        manifest = bundle.read(path).manifest
        score = manifest.metrics.test[metric] if manifest.metrics else float("nan")
        print(f"  {label}  {score:.4f}   {path}")
    return fm_path, afm_path
