"""The training CLI end to end in quick mode, as a user runs it."""

import json

import pytest
import torch

from tests.conftest import train_tiny
from training import bundle, recipes
from training.__main__ import main
from training.bundle.manifest import TrainingConfig
from training.cli import QUICK, parse_args, train_options
from training.commands import DataOptions, TrainOptions, reproduce


def training(published: bundle.Bundle) -> TrainingConfig:
    config = published.manifest.training_config
    assert config is not None
    return config


def metrics_on(published: bundle.Bundle, split: str) -> dict[str, float]:
    metrics = published.manifest.metrics
    assert metrics is not None
    return dict(getattr(metrics, split))


def test_quick_training_publishes_a_complete_bundle(tmp_path, capsys):
    path = train_tiny(tmp_path / "models", "--name", "quick-afm")
    assert path == tmp_path / "models" / "quick-afm" / "1"
    files = {p.name for p in path.iterdir()}
    assert {
        "model.onnx",
        "bundle.json",
        "checkpoint.pt",
        "learning_curve.png",
        "attention.png",
    } <= files
    manifest = bundle.read(path).manifest
    assert manifest.task == "ctr" and manifest.model == "afm"
    assert manifest.metrics is not None and manifest.metrics.validation
    assert 0.0 <= manifest.metrics.test["auc"] <= 1.0
    assert manifest.training_config is not None and manifest.training_config.epochs == 1
    assert manifest.data is not None and len(manifest.data.fingerprint) == 64
    assert "published" in capsys.readouterr().out


def test_versions_increase_with_each_publish(tmp_path):
    first = train_tiny(tmp_path, "--name", "m")
    second = train_tiny(tmp_path, "--name", "m")
    assert (first.name, second.name) == ("1", "2")
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")]  # no staging left


def test_same_seed_gives_the_same_model(tmp_path):
    a = bundle.read(train_tiny(tmp_path, "--name", "a", "--seed", "3")).manifest
    b = bundle.read(train_tiny(tmp_path, "--name", "b", "--seed", "3")).manifest
    c = bundle.read(train_tiny(tmp_path, "--name", "c", "--seed", "4")).manifest
    assert a.metrics == b.metrics and a.bias == b.bias
    assert a.metrics != c.metrics


def test_rating_fm_then_afm_from_its_bundle_keeps_each_phase_schedule(tmp_path):
    fm_path = train_tiny(tmp_path, "--task", "rating", "--model", "fm", "--lr-decay", "0.5",
                         "--name", "s-fm")  # fmt: skip
    afm_path = train_tiny(tmp_path, "--task", "rating", "--init-from", str(fm_path),
                          "--name", "s-afm")  # fmt: skip
    fm, afm = bundle.read(fm_path), bundle.read(afm_path)
    assert fm.manifest.model == "fm" and afm.manifest.model == "afm"
    assert afm.manifest.link.model_dump() == {"kind": "clip", "min": -1.0, "max": 1.0}
    assert training(fm).lr_decay == 0.5  # each phase has its own schedule
    assert training(afm).lr_decay == 1.0
    assert training(afm).init_from == str(fm_path) and training(afm).fm_start == "exact"
    assert "rmse" in metrics_on(afm, "test")


def quick(**settings) -> TrainOptions:
    """The options `train --quick --task rating --threads 1` gives, with `settings` on top."""
    data = DataOptions(task="rating", max_rows=QUICK["max_rows"])
    sizes = {k: v for k, v in QUICK.items() if k != "max_rows"}
    return TrainOptions(data=data, threads=1, **{**sizes, **settings})


def test_a_recipe_publishes_fm_then_the_afm_an_init_from_run_gives(tmp_path, capsys):
    recipe = recipes.Recipe(
        fm=quick(model="fm", name="r-fm", out=tmp_path, lr_decay=0.5, dropout=0.5),
        afm=quick(name="r-afm", out=tmp_path, optimizer="adagrad", lr=0.05, l2_attention=5e-4),
        reference="quick recipe",
    )
    assert recipe.fm == train_options(parse_args(
        ["train", "--quick", "--task", "rating", "--threads", "1", "--model", "fm", "--name", "r-fm",
         "--out", str(tmp_path), "--lr-decay", "0.5", "--dropout", "0.5"]
    ))  # the CLI builds the same options  # fmt: skip
    fm_path, afm_path = reproduce(recipe)
    assert "quick recipe" in capsys.readouterr().out
    assert (fm_path, afm_path) == (tmp_path / "r-fm" / "1", tmp_path / "r-afm" / "1")
    # the AFM phase is the same model as an AFM started by hand from the published FM bundle
    by_hand = train_tiny(tmp_path, "--task", "rating", "--init-from", str(fm_path), "--name", "r-afm",
                         "--optimizer", "adagrad", "--lr", "0.05", "--l2-attention", "5e-4")  # fmt: skip
    afm, again = bundle.read(afm_path).manifest, bundle.read(by_hand).manifest
    assert again.history == afm.history and again.bias == afm.bias
    assert again.metrics == afm.metrics and again.training_config == afm.training_config


def test_an_afm_started_from_an_afm_bundle_goes_on_from_all_its_weights(tmp_path, capsys):
    first = train_tiny(tmp_path, "--task", "rating", "--name", "a")
    capsys.readouterr()
    train_tiny(
        tmp_path, "--task", "rating", "--name", "b", "--init-from", str(first), "--lr", "1e-4"
    )
    start = next(line for line in capsys.readouterr().out.splitlines() if " start: " in line)
    # the attention network comes along too: the start scores exactly as the first model did
    first_rmse = metrics_on(bundle.read(first), "validation")["rmse"]
    assert start.startswith(f"b start: valid rmse {first_rmse:.4f}")
    with pytest.raises(SystemExit, match="attention size differs"):
        train_tiny(tmp_path, "--task", "rating", "--init-from", str(first), "--attention-dim", "3")


def test_starting_from_a_bundle_of_other_fields_names_both_field_lists(tmp_path):
    from tests.training.test_readers import write_same_rows

    synthetic = train_tiny(tmp_path, "--task", "rating")
    csv, _, _ = write_same_rows(tmp_path, rows=300)
    with pytest.raises(
        SystemExit,
        match=r"fields \(user, item, daytime, .*\) are not this data set's \(user, item, weather\)",
    ):
        main(["train", "--quick", "--dataset", "files", "--fields", "user,item,weather", "--train", str(csv),
              "--validation", str(csv), "--test", str(csv), "--init-from", str(synthetic), "--out", str(tmp_path)])  # fmt: skip
    with pytest.raises(SystemExit, match=r"--bundle: that bundle's fields \(user, item, daytime"):
        main(["evaluate", "--bundle", str(synthetic), "--dataset", "files", "--fields", "user,item,weather",
              "--train", str(csv), "--validation", str(csv), "--test", str(csv)])  # fmt: skip


def test_starting_from_a_bundle_of_other_rows_or_another_task_stops(tmp_path, capsys):
    fm = train_tiny(tmp_path, "--task", "rating", "--model", "fm", "--seed", "1")
    # synthetic draws its rows by seed: seed 2's test rows are not those the start held out
    with pytest.raises(SystemExit, match=r"--init-from: that bundle was trained on other data"):
        train_tiny(tmp_path, "--task", "rating", "--init-from", str(fm), "--seed", "2")
    with pytest.raises(SystemExit, match=r"--init-from: .* trained on other data"):
        train_tiny(tmp_path, "--task", "rating", "--init-from", str(fm), "--seed", "1",
                   "--max-rows", "500")  # fmt: skip
    with pytest.raises(SystemExit, match=r"trained for --task rating, not ctr"):
        train_tiny(tmp_path, "--task", "ctr", "--init-from", str(fm), "--seed", "1")
    assert train_tiny(tmp_path, "--task", "rating", "--init-from", str(fm), "--seed", "1").exists()
    # evaluating on other rows is legitimate, but the user is told
    capsys.readouterr()
    main(["evaluate", "--bundle", str(fm), "--max-rows", "2000", "--seed", "2"])
    assert "was trained on other data" in capsys.readouterr().err
    main(["evaluate", "--bundle", str(fm), "--max-rows", "2000", "--seed", "1"])
    assert "trained on other data" not in capsys.readouterr().err


def test_a_start_or_bundle_that_is_not_a_bundle_is_named_not_a_traceback(tmp_path):
    with pytest.raises(SystemExit, match=r"--init-from: .*nowhere: bundle.json is missing"):
        train_tiny(tmp_path, "--init-from", str(tmp_path / "nowhere"))
    with pytest.raises(SystemExit, match=r"--bundle: .*nowhere: bundle.json is missing"):
        main(["evaluate", "--bundle", str(tmp_path / "nowhere")])
    served_only = train_tiny(tmp_path, "--task", "rating")
    (served_only / "checkpoint.pt").unlink()  # a bundle as the service needs it: no torch weights
    with pytest.raises(SystemExit, match=r"--init-from: .* has no checkpoint.pt"):
        train_tiny(tmp_path, "--task", "rating", "--init-from", str(served_only))


@pytest.mark.parametrize(
    ("option", "value", "problem"),
    [
        ("--epochs", "0", "must be at least 1, not 0"),
        ("--batch-size", "0", "must be at least 1"),
        ("--max-rows", "0", "must be at least 1"),  # not "no cap at all"
        ("--embedding-dim", "0", "must be at least 1"),
        ("--lr", "-1", "must be above 0.0, not -1"),
        ("--attention-lr", "0", "must be above 0.0"),
        ("--dropout", "1.5", "must be in [0.0, 1.0), not 1.5"),
        ("--l2-attention", "-0.001", "must be at least 0.0"),
        ("--seed", "-1", "must be at least 0"),
        ("--lr", "abc", "invalid float value: 'abc'"),
    ],
)
def test_a_bad_number_stops_at_parsing_naming_the_option(option, value, problem, capsys):
    with pytest.raises(SystemExit):
        parse_args(["train", option, value])
    assert f"argument {option}: {problem}" in capsys.readouterr().err


def test_a_missing_data_file_is_named_not_a_traceback(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(SystemExit, match=r"nope\.csv"):
        main(["train", "--quick", "--dataset", "files", "--fields", "a,b", "--train", str(missing),
              "--validation", str(missing), "--test", str(missing), "--out", str(tmp_path)])  # fmt: skip


def test_fm_trained_with_batch_norm_publishes_a_plain_fm(tmp_path, capsys):
    main(["train", "--quick", "--task", "rating", "--model", "fm", "--batch-norm",
          "--name", "bn", "--out", str(tmp_path)])  # fmt: skip
    path = tmp_path / "bn" / "1"
    manifest = bundle.read(path).manifest
    assert manifest.training_config is not None and manifest.training_config.batch_norm
    assert manifest.network is not None and not manifest.network.batch_norm  # folded into p and w0
    capsys.readouterr()
    main(["evaluate", "--bundle", str(path), "--max-rows", "2000", "--split", "test"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert manifest.metrics is not None
    assert printed["rmse"] == pytest.approx(manifest.metrics.test["rmse"], abs=1e-4)


def test_afm_from_a_batch_norm_fm_with_the_authors_start(tmp_path):
    fm = train_tiny(tmp_path, "--task", "rating", "--model", "fm", "--batch-norm", "--name", "a-fm")
    train_tiny(tmp_path, "--task", "rating", "--init-from", str(fm), "--fm-start", "authors",
               "--name", "a-afm")  # fmt: skip
    afm = bundle.read(tmp_path / "a-afm" / "1").manifest
    assert afm.training_config is not None and afm.training_config.fm_start == "authors"
    assert training(bundle.read(fm)).batch_norm
    with pytest.raises(SystemExit, match="batch-norm"):
        main(["train", "--quick", "--model", "afm", "--batch-norm", "--out", str(tmp_path)])


def test_files_dataset_trains_on_a_declared_spec(tmp_path):
    from tests.training.test_readers import write_same_rows

    csv, parquet, _ = write_same_rows(tmp_path, rows=300)
    main(["train", "--quick", "--dataset", "files", "--fields", "user,item,weather:categorical:2",
          "--train", str(csv), "--validation", str(parquet), "--test", str(csv), "--out", str(tmp_path / "m")])  # fmt: skip
    manifest = bundle.read(tmp_path / "m" / "files-afm" / "1").manifest
    assert [f.name for f in manifest.fields] == ["user", "item", "weather"]


def test_evaluate_scores_a_bundle_through_onnxruntime(tmp_path, capsys):
    path = train_tiny(tmp_path)
    capsys.readouterr()
    main(["evaluate", "--bundle", str(path), "--max-rows", "2000", "--split", "test"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["auc"] == pytest.approx(metrics_on(bundle.read(path), "test")["auc"], abs=1e-4)


@pytest.mark.parametrize("factor", ["0", "1.5", "-0.5"])
def test_a_learning_rate_decay_outside_0_1_is_refused(factor, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--quick", "--lr-decay", factor])
    assert "--lr-decay: must be in (0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize("dataset", ["frappe", "ml-100k"])
def test_missing_data_files_end_with_a_message_naming_the_option(dataset, tmp_path):
    argv = ["train", "--dataset", dataset, "--task", "rating", "--data-dir", str(tmp_path)]
    with pytest.raises(SystemExit, match=f"--data-dir, the folder that holds {dataset}/"):
        main([*argv, "--out", str(tmp_path / "models")])


@pytest.mark.parametrize("option", ["--drop-used-negatives", "--paper-negatives"])
@pytest.mark.parametrize("dataset", ["synthetic", "files"])
def test_frappe_negative_options_are_refused_outside_frappe(dataset, option):
    with pytest.raises(SystemExit, match=f"{option} is for --dataset frappe"):
        main(["train", "--quick", "--dataset", dataset, option])


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--format", "libfm"], "use the CSV"), (["--drop-used-negatives"], "nothing to do")],
)
def test_paper_negatives_refuse_what_they_cannot_draw_from_with_a_message(extra, message):
    with pytest.raises(SystemExit, match=message):
        main(["train", "--quick", "--dataset", "frappe", "--paper-negatives", *extra])


@pytest.mark.parametrize(
    ("options", "negatives"),
    [([], "--paper-negatives"), (["--negatives", "file"], "--drop-used-negatives"),
     (["--download"], None)],
)  # fmt: skip
def test_reproduce_trains_on_the_negatives_it_is_told(options, negatives):
    args = parse_args(["reproduce", "--seed", "3", *options])
    recipe = recipes.frappe(seed=args.seed, download=args.download, negatives=args.negatives)
    for phase in (recipe.fm, recipe.afm):
        data = phase.data
        assert (data.dataset, data.task, data.seed) == ("frappe", "rating", 3)
        assert data.paper_negatives == (negatives == "--paper-negatives")
        assert data.drop_used_negatives == (negatives == "--drop-used-negatives")
        assert data.download == (negatives is None)
        assert data.data_format == ("libfm" if negatives is None else "csv")
    assert (recipe.fm.model, recipe.afm.model) == ("fm", "afm")
    assert recipe.fm.data == recipe.afm.data  # the AFM starts from an FM of the same rows
    assert recipe.afm.init_from is None  # set to the FM bundle when the FM phase publishes it


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for option in (
        "--dataset",
        "--task",
        "--model",
        "--out",
        "--init-from",
        "--fm-start",
        "--batch-norm",
        "--lr-decay",
        "--drop-used-negatives",
        "--paper-negatives",
        "--device",
        "--quick",
        "--seed",
        "--data",
        "--split",
        "--split-by",
        "--positive-label",
        "--delimiter",
    ):
        assert option in text
    assert "(default: None)" not in text  # an option without a default says what it takes


def test_data_alone_selects_your_own_data_and_split_defaults_apply():
    options = train_options(parse_args(["train", "--data", "clicks.csv", "--fields", "user"]))
    assert options.data.dataset == "files" and options.data.data is not None
    assert options.data.split_fractions == (0.8, 0.1, 0.1) and options.data.split_by is None
    assert options.batch_size is None  # chosen from the training rows
    named = train_options(parse_args(["train", "--data", "d", "--split", "0.7,0.2,0.1",
                                      "--split-by", "ts", "--batch-size", "256"]))  # fmt: skip
    assert named.data.split_fractions == (0.7, 0.2, 0.1) and named.data.split_by == "ts"
    assert named.batch_size == 256
    assert train_options(parse_args(["train"])).data.dataset == "synthetic"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_without_a_cuda_device_stops_before_loading_data(tmp_path):
    with pytest.raises(SystemExit, match=r"--device cuda: torch .* sees no CUDA device here"):
        train_tiny(tmp_path, "--device", "cuda")
    with pytest.raises(SystemExit, match=r"--device gpu: not a device; use cpu, cuda or cuda:N"):
        train_tiny(tmp_path, "--device", "gpu")
    assert not (tmp_path / "synthetic-afm").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_cuda_publishes_a_bundle_that_scores_as_it_trained(tmp_path, capsys):
    # an FM with batch norm (folded on the device), then AFM from it, both on the GPU
    fm = train_tiny(tmp_path, "--task", "rating", "--model", "fm", "--batch-norm", "--device",
                    "cuda", "--name", "g-fm")  # fmt: skip
    train_tiny(tmp_path, "--task", "rating", "--init-from", str(fm), "--device", "cuda",
               "--l2-attention", "1e-3", "--name", "g-afm")  # fmt: skip
    manifest = bundle.read(tmp_path / "g-afm" / "1").manifest
    assert manifest.training_config is not None and manifest.training_config.device == "cuda"
    assert manifest.history is not None and len(manifest.history) == 1
    assert manifest.history[0]["train_loss"] > 0
    capsys.readouterr()
    # the exported graph, run by onnxruntime on the CPU, scores as the GPU-trained weights did
    main(["evaluate", "--bundle", str(tmp_path / "g-afm" / "1"), "--max-rows", "2000", "--split", "test"])  # fmt: skip
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert manifest.metrics is not None
    assert printed["rmse"] == pytest.approx(manifest.metrics.test["rmse"], abs=1e-4)
