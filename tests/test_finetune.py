"""python -m simclr.finetune on tiny runs: the labelled subset, what trains and what stays, the
baseline's weights, Ctrl-C and --resume, the result, and every mistake as one line (exit 2)."""
import json
import os
import signal

import numpy
import pytest

from simclr import finetune, finetuning, linear_eval, train
from simclr.data import load_from_arguments
from simclr.model import build_finetune_model, build_model
from simclr.training.checkpoint import load_checkpoint
from test_cli_errors import write_images

DATA = ["--dataset", "synthetic", "--synthetic-size", "80", "--val-fraction", "0.25"]
PRETRAIN = ["--arch", "resnet18", "--width", "0.0625", "--batch-size", "16", "--epochs", "1",
            "--max-steps", "2", "--seed", "3"]
# 60 training images (15 of each of 4 classes), 20 held out; half labelled: 8 of each class
TINY = DATA + ["--label-fraction", "0.5", "--batch-size", "8", "--epochs", "2", "--seed", "1"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """Two pre-training runs of 2 steps: {"nonlinear": folder, "linear": folder (linear head)}."""
    root = tmp_path_factory.mktemp("pretrained")
    runs = {}
    for head in ("nonlinear", "linear"):
        runs[head] = str(root / head)
        assert train.main(PRETRAIN + DATA + ["--head", head, "--out", runs[head]]) == 0
    return runs


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # image folders cache here


def finetuned(out, *argv):
    """Run simclr.finetune into `out`; returns its checkpoint's (model state, optimiser state,
    meta)."""
    assert finetune.main(list(argv) + ["--out", str(out)]) == 0
    return load_checkpoint(os.path.join(out, "checkpoint.npz"))


def assert_same_state(a, b, names=None):
    for name in names or a:
        numpy.testing.assert_array_equal(a[name], b[name], err_msg=name)


def encoder_state(model_state):
    return {name: value for name, value in model_state.items() if name.startswith("encoder.")}


def held_out_top1_top5(folder):
    """(top-1, top-5) on the held-out split of the network saved in `folder`, counted here:
    its checkpoint's weights in the network its settings build, the logits of every held-out
    image in evaluation mode, and the rank of each image's class among them."""
    from autograd import Tensor, no_grad
    from simclr.evaluate import to_network_input
    model_state, _, meta = load_checkpoint(os.path.join(folder, "checkpoint.npz"))
    splits = load_from_arguments(meta["config"])
    _, held_out = splits.held_out()
    network = build_finetune_model(meta["config"], held_out.images.shape[1],
                                   len(splits.train.classes))
    network.load_state_dict(model_state)
    with no_grad():
        logits = network.eval()(Tensor(to_network_input(held_out.images, numpy))).data
    rank = (logits > logits[numpy.arange(len(logits)), held_out.labels][:, None]).sum(axis=1)
    return float((rank == 0).mean()), float((rank < 5).mean())


def test_label_subset_is_class_balanced_and_fixed_by_its_seed():
    args = finetune.parse_args(TINY + ["--from-scratch", "--out", "unused"])
    train_split = load_from_arguments(vars(args)).train
    config = dict(vars(args))

    def subset(seed):
        return finetune.choose_labels(config | {"label_seed": seed}, train_split)

    first = subset(0)
    assert numpy.bincount(train_split.labels[first]).tolist() == [8, 8, 8, 8]
    numpy.testing.assert_array_equal(first, subset(0))
    assert not numpy.array_equal(first, subset(1))


def test_a_run_writes_the_result_metrics_and_its_labels(tmp_path, pretrained):
    _, _, meta = finetuned(tmp_path, "--checkpoint", pretrained["nonlinear"], "--eval-every",
                           "1", *TINY)
    result = json.load(open(tmp_path / "finetune.json"))
    assert (result["top1"], result["top5"]) == held_out_top1_top5(tmp_path)
    assert result["labels"] == 32 and result["train_images"] == 60 and result["split"] == "val"
    assert result["epochs"] == 2 and result["steps"] == 8 and result["lr"] == 0.05 * 8 / 256
    assert result["pretrain_step"] == 2 and result["what"] == "fine-tuned pre-trained encoder"
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 9))
    assert all(0 <= r["train_accuracy"] <= 1 and r["lr"] > 0 for r in steps)
    assert [(r["epoch"], r["split"]) for r in records if "top1" in r] == [(0, "val"), (1, "val")]
    labels = [int(line) for line in open(tmp_path / "labels.txt")]
    assert labels == meta["config"]["label_indices"] and labels == sorted(labels)
    assert "label_indices" not in json.load(open(tmp_path / "config.json"))


def test_label_indices_file_is_honoured(tmp_path, pretrained):
    """labels.txt given back as --label-indices makes the same run."""
    source = ["--checkpoint", pretrained["nonlinear"], "--max-steps", "2"]
    model_a, _, _ = finetuned(tmp_path / "a", *source, *TINY)
    argv = [arg for arg in TINY if arg not in ("--label-fraction", "0.5")]
    model_b, _, meta = finetuned(tmp_path / "b", *source, *argv, "--label-indices",
                                 str(tmp_path / "a" / "labels.txt"))
    assert meta["config"]["labels"] == 32 and meta["config"]["label_fraction"] is None
    assert_same_state(model_a, model_b)
    (tmp_path / "some.txt").write_text("\n".join(str(i) for i in (9, 0, 4, 2, 7, 1)) + "\n\n")
    _, _, meta = finetuned(tmp_path / "c", *source, *argv, "--batch-size", "4",
                           "--label-indices", str(tmp_path / "some.txt"))
    assert meta["config"]["label_indices"] == [0, 1, 2, 4, 7, 9]


def test_finetuning_changes_the_encoder_while_linear_eval_does_not(tmp_path, pretrained,
                                                                   monkeypatch):
    before, _, _ = load_checkpoint(os.path.join(pretrained["nonlinear"], "checkpoint.npz"))
    built = []   # the model linear_eval evaluates, to read its weights after the evaluation

    def build_and_keep(*args):
        built.append(build_model(*args))
        return built[-1]

    monkeypatch.setattr(linear_eval, "build_model", build_and_keep)
    assert linear_eval.main(["--checkpoint", pretrained["nonlinear"], "--epochs", "1",
                             "--output", str(tmp_path / "eval.json")] + DATA) == 0
    after = built[0].state_dict()
    assert_same_state(encoder_state(before), encoder_state(after))
    model, _, _ = finetuned(tmp_path / "ft", "--checkpoint", pretrained["nonlinear"], *TINY)
    weights = [name for name in encoder_state(before) if name.endswith("weight")]
    changed = [name for name in weights if not numpy.array_equal(before[name], model[name])]
    # all but the few that zero_init_residual's zero scales shield at this tiny learning rate
    assert "encoder.conv1.weight" in changed and len(changed) > 0.8 * len(weights)
    assert not numpy.array_equal(before["encoder.bn1.running_mean"],
                                 model["encoder.bn1.running_mean"])  # batch statistics trained


def test_from_scratch_starts_from_a_fresh_build_model_not_the_checkpoint(tmp_path, pretrained,
                                                                        monkeypatch):
    start = {}
    real_init = finetuning.FineTuning.__init__

    def init(run, *args, **kwargs):
        real_init(run, *args, **kwargs)
        start.update({name: value.copy() for name, value in run.model.state_dict().items()})

    monkeypatch.setattr(finetuning.FineTuning, "__init__", init)
    finetuned(tmp_path, "--checkpoint", pretrained["nonlinear"], "--from-scratch",
              "--max-steps", "1", *TINY)
    config = json.load(open(tmp_path / "config.json"))
    fresh = build_model(config, 32).encoder.state_dict()   # seed 1, not the checkpoint's 3
    assert_same_state({f"encoder.{name}": value for name, value in fresh.items()}, start,
                      names=[f"encoder.{name}" for name in fresh])
    trained, _, _ = load_checkpoint(os.path.join(pretrained["nonlinear"], "checkpoint.npz"))
    assert not numpy.array_equal(trained["encoder.conv1.weight"], start["encoder.conv1.weight"])
    result = json.load(open(tmp_path / "finetune.json"))
    assert result["what"].startswith("from scratch") and result["arch"] == "resnet18"


def test_from_scratch_without_a_checkpoint_takes_arch_and_width(tmp_path):
    model, _, meta = finetuned(tmp_path, "--from-scratch", "--arch", "resnet18", "--width",
                               "0.0625", "--max-steps", "1", *TINY)
    assert meta["config"]["arch"] == "resnet18" and model["classifier.weight"].shape == (4, 32)


def test_freeze_until_leaves_the_frozen_stages_bit_identical(tmp_path, pretrained):
    before, _, _ = load_checkpoint(os.path.join(pretrained["nonlinear"], "checkpoint.npz"))
    model, _, _ = finetuned(tmp_path, "--checkpoint", pretrained["nonlinear"],
                            "--freeze-until", "layer2", *TINY)
    frozen = ("encoder.conv1.", "encoder.bn1.", "encoder.layer1.", "encoder.layer2.")
    names = [name for name in encoder_state(before) if name.startswith(frozen)]
    assert any("running_var" in name for name in names) and len(names) > 20
    assert_same_state(before, model, names)
    for name in ("encoder.layer3.0.conv1.weight", "encoder.layer3.0.bn1.running_mean"):
        assert not numpy.array_equal(before[name], model[name]), name


def test_from_head_layer_keeps_the_heads_first_layer(tmp_path, pretrained):
    before, _, _ = load_checkpoint(os.path.join(pretrained["nonlinear"], "checkpoint.npz"))
    model, _, _ = finetuned(tmp_path, "--checkpoint", pretrained["nonlinear"],
                            "--from-head-layer", "1", "--max-steps", "1", *TINY)
    assert {"head.0.weight", "head.1.running_var"} <= set(model)
    assert "head.3.weight" not in model and model["classifier.weight"].shape == (4, 32)
    assert not numpy.array_equal(before["head.0.weight"], model["head.0.weight"])


@pytest.mark.parametrize("stop", ["sigint-mid-epoch", "max-steps-at-epoch-end"])
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one_bitwise(
        tmp_path, pretrained, monkeypatch, stop):
    argv = ["--checkpoint", pretrained["nonlinear"]] + TINY      # 4 steps an epoch, 8 in all
    whole, _, _ = finetuned(tmp_path / "whole", *argv)
    parts = str(tmp_path / "parts")
    if stop == "sigint-mid-epoch":
        real_step, calls = finetuning.finetune_step, []

        def interrupted_step(*args):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as step 3 begins
            return real_step(*args)

        monkeypatch.setattr(finetuning, "finetune_step", interrupted_step)
        assert finetune.main(argv + ["--out", parts]) == 130
        monkeypatch.setattr(finetuning, "finetune_step", real_step)
        saved, evaluated = 3, []  # step 3 was finished, then saved; no result
        assert not os.path.exists(os.path.join(parts, "finetune.json"))
    else:
        finetuned(parts, *argv, "--max-steps", "4")  # a smoke run's end is evaluated too
        saved, evaluated = 4, [4]
        assert json.load(open(os.path.join(parts, "finetune.json")))["steps"] == 4
    assert load_checkpoint(os.path.join(parts, "checkpoint.npz"))[2]["step"] == saved
    assert finetune.main(["--resume", parts]) == 0
    resumed, optimizer, meta = load_checkpoint(os.path.join(parts, "checkpoint.npz"))
    _, optimizer_whole, _ = load_checkpoint(str(tmp_path / "whole" / "checkpoint.npz"))
    assert meta["step"] == 8
    assert_same_state(whole, resumed)
    assert_same_state(optimizer_whole["momentum_buffers"], optimizer["momentum_buffers"])
    results = [json.load(open(os.path.join(folder, "finetune.json")))
               for folder in (tmp_path / "whole", parts)]
    assert [r["top1"] for r in results] == [results[0]["top1"]] * 2
    steps = [json.loads(line)["step"] for line in open(os.path.join(parts, "metrics.jsonl"))]
    assert steps == sorted([1, 2, 3, 4, 5, 6, 7, 8, 8] + evaluated)  # steps and evaluations


def test_a_folder_holding_a_run_is_refused(tmp_path, pretrained, capsys):
    argv = ["--checkpoint", pretrained["nonlinear"], "--max-steps", "1", *TINY,
            "--out", str(tmp_path)]
    assert finetune.main(argv) == 0
    capsys.readouterr()
    assert finetune.main(argv) == 2
    assert "already holds a training run" in capsys.readouterr().err


BAD_INDICES = {"abc": "not an image index", "3\n60\n": "outside the training split's 0..59",
               "1\n2\n1\n": "index 1 appears twice", "-1\n": "outside", "\n\n": "lists no image",
               "1.5\n": "not an image index", "0\n1\n2\n": "fewer than the 4 classes"}


@pytest.mark.parametrize("text", list(BAD_INDICES), ids=list(range(len(BAD_INDICES))))
def test_a_bad_label_indices_file_is_refused_in_one_line(tmp_path, pretrained, capsys, text):
    (tmp_path / "labels.txt").write_text(text)
    argv = ["--checkpoint", pretrained["nonlinear"], "--label-indices",
            str(tmp_path / "labels.txt"), "--out", str(tmp_path / "run")] + DATA
    code, line = one_line_error(capsys, argv)
    assert code == 2 and "--label-indices" in line and BAD_INDICES[text] in line, line
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


MISTAKES = [
    (["--label-fraction", "0"], ["--label-fraction", "(0, 1]"]),
    (["--label-fraction", "1.5"], ["--label-fraction", "(0, 1]"]),
    (["--label-fraction", "0.02"], ["--label-fraction 0.02", "fewer than one per class"]),
    (["--label-fraction", "0.5", "--label-indices", "x"], ["--label-indices", "not allowed"]),
    (["--label-fraction", "0.5", "--freeze-until", "layer5"], ["--freeze-until", "layer5"]),
    (["--label-fraction", "0.5", "--from-head-layer", "2"], ["--from-head-layer", "2"]),
    (["--label-fraction", "0.5", "--batch-size", "64"], ["--batch-size 64", "32 labelled"]),
    ([], ["--label-fraction", "--label-indices"]),
]


@pytest.mark.parametrize("argv, fragments", MISTAKES, ids=list(range(len(MISTAKES))))
def test_a_flag_mistake_is_one_line_naming_the_flag(tmp_path, pretrained, capsys, argv,
                                                   fragments):
    code, line = one_line_error(capsys, ["--checkpoint", pretrained["nonlinear"], "--out",
                                         str(tmp_path / "run")] + DATA + argv)
    assert code == 2 and all(fragment in line for fragment in fragments), line


def test_other_mistakes_are_one_line(tmp_path, pretrained, capsys):
    out = ["--out", str(tmp_path / "run"), "--label-fraction", "0.5"]
    garbled = tmp_path / "garbled.npz"
    garbled.write_bytes(b"not a checkpoint")
    write_images(tmp_path / "flat", 12)
    for name in ("cat", "dog"):
        write_images(tmp_path / "no_test" / name, 6)
    folder_run = tmp_path / "ft"
    finetuned(folder_run, "--checkpoint", pretrained["nonlinear"], "--max-steps", "1", *TINY)
    cases = [
        (["--checkpoint", str(tmp_path / "missing")] + DATA + out, ["--checkpoint", "missing"]),
        (["--checkpoint", str(garbled)] + DATA + out, ["--checkpoint", "not a checkpoint"]),
        (["--checkpoint", pretrained["linear"], "--from-head-layer", "1"] + DATA + out,
         ["--from-head-layer 1", "'linear'"]),
        (["--checkpoint", str(folder_run)] + DATA + out, ["--resume", "fine-tuning run"]),
        (["--resume", pretrained["nonlinear"]], ["--resume", "--checkpoint"]),
        (["--resume", str(folder_run), "--lr", "0.1"], ["--lr 0.1", "keeps the settings"]),
        (["--resume", str(folder_run), "--label-indices", "x"],
         ["--label-indices x (saved: None)", "keeps the settings"]),
        (["--label-fraction", "0.5", "--out", str(tmp_path / "x")] + DATA,
         ["--checkpoint", "--from-scratch"]),
        (["--checkpoint", pretrained["nonlinear"], "--arch", "resnet50"] + DATA + out,
         ["--arch", "--from-scratch"]),
        (["--checkpoint", pretrained["nonlinear"], "--dataset", "folder", "--data-dir",
          str(tmp_path / "flat"), "--val-fraction", "0.25"] + out, ["labelled images"]),
        (["--checkpoint", pretrained["nonlinear"], "--dataset", "folder", "--data-dir",
          str(tmp_path / "no_test")] + out, ["no test split", "--val-fraction"]),
    ]
    for argv, fragments in cases:
        code, line = one_line_error(capsys, argv)
        assert code == 2 and all(fragment in line for fragment in fragments), (argv, line)


def one_line_error(capsys, argv):
    """(exit status, the one line on stderr) of simclr.finetune.main(argv)."""
    capsys.readouterr()
    code = finetune.main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return code, lines[0]


def test_finetune_and_resume_run_through_backend_cupy_on_the_rehearsal(tmp_path, pretrained,
                                                                       capsys):
    """The device path on the CPU's rehearsal of a GPU (tests/device_rehearsal.py): no NumPy
    function sees a device array, the network and its checkpoint live on the 'device'."""
    from bench.rehearsal import rehearsal
    argv = ["--checkpoint", pretrained["nonlinear"], "--backend", "cupy", "--freeze-until",
            "stem", "--from-head-layer", "1", "--eval-every", "1"] + TINY
    with rehearsal() as device:
        finetuned(tmp_path, *argv, "--max-steps", "5")
        assert finetune.main(["--resume", str(tmp_path)]) == 0
        assert device.launches > 0
    result = json.load(open(tmp_path / "finetune.json"))
    assert result["steps"] == 8
    assert (result["top1"], result["top5"]) == held_out_top1_top5(tmp_path)  # on the CPU
    capsys.readouterr()


def test_the_default_batch_gives_a_small_subset_several_steps_an_epoch():
    from simclr.finetune import MIN_STEPS, default_batch
    assert default_batch(40000) == default_batch(4000) == 256
    assert default_batch(400) == 64 and 400 // 64 >= MIN_STEPS   # 1% of CIFAR-10's 40,000
    assert default_batch(3) == 2 and default_batch(2) == 2
