"""python -m simclr.train and simclr.linear_eval on tiny smoke runs (synthetic images)."""
import json
import os
import signal

import numpy
import pytest

from helpers import knn_vote, recording
from simclr import linear_eval, pretraining, train
from simclr.evaluate import knn_accuracy, linear_probe
from simclr.model import build_model
from simclr.training.checkpoint import load_checkpoint
from simclr.training.interrupts import Interrupted

TINY = ["--dataset", "synthetic", "--synthetic-size", "48", "--arch", "resnet18", "--width", "0.0625",
        "--batch-size", "16", "--epochs", "2", "--warmup-epochs", "1", "--seed", "3"]


def run(out, *extra):
    args = train.parse_args(TINY + ["--out", str(out)] + list(extra))
    config, resumed = train.resolve_config(args)
    return train.train(config, resumed, stream=open(os.devnull, "w"))


def resume(out, *extra):
    args = train.parse_args(["--resume", str(out)] + list(extra))
    config, resumed = train.resolve_config(args)
    return train.train(config, resumed, stream=open(os.devnull, "w"))


def parameters(out):
    model_state, optimizer_state, meta = load_checkpoint(os.path.join(out, "checkpoint.npz"))
    return model_state, optimizer_state["momentum_buffers"], meta["step"]


def assert_same_run(a, b):
    model_a, momentum_a, step_a = parameters(a)
    model_b, momentum_b, step_b = parameters(b)
    assert step_a == step_b
    for name in model_a:
        numpy.testing.assert_array_equal(model_a[name], model_b[name], err_msg=name)
    for index in momentum_a:
        numpy.testing.assert_array_equal(momentum_a[index], momentum_b[index])


def test_smoke_run_writes_config_metrics_checkpoint_and_loss_curve(tmp_path):
    record = run(tmp_path)
    assert record["step"] == 6 and numpy.isfinite(record["loss"])
    for name in ("config.json", "metrics.jsonl", "checkpoint.npz", "loss.png"):
        assert (tmp_path / name).exists(), name
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert {"step", "epoch", "loss", "lr", "images_per_s", "elapsed"} <= set(lines[0])
    assert json.load(open(tmp_path / "config.json"))["arch"] == "resnet18"


@pytest.mark.parametrize("stop_after", [2, 3])  # mid-epoch, and between epochs (3 steps per epoch)
def test_interrupted_and_resumed_run_equals_uninterrupted_run_bitwise(tmp_path, stop_after):
    run(tmp_path / "whole")
    run(tmp_path / "parts", "--max-steps", str(stop_after))
    assert parameters(tmp_path / "parts")[2] == stop_after
    resume(tmp_path / "parts")
    assert_same_run(tmp_path / "whole", tmp_path / "parts")
    steps = [json.loads(line)["step"] for line in open(tmp_path / "parts" / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_a_step_lets_it_finish_saves_it_and_the_run_resumes_exactly(
        tmp_path, monkeypatch, signum):
    run(tmp_path / "whole")
    real_step, calls = pretraining.training_step, []

    def interrupted_step(*args):
        calls.append(1)
        if len(calls) == 4:
            os.kill(os.getpid(), signum)  # Ctrl-C (or a kill) arrives as step 4 begins
        return real_step(*args)

    monkeypatch.setattr(pretraining, "training_step", interrupted_step)
    with pytest.raises(Interrupted) as stopped:
        run(tmp_path / "parts")
    assert stopped.value.signum == signum and stopped.value.saved
    monkeypatch.setattr(pretraining, "training_step", real_step)
    assert parameters(tmp_path / "parts")[2] == 4  # step 4 was finished, then saved
    resume(tmp_path / "parts")
    assert_same_run(tmp_path / "whole", tmp_path / "parts")


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    real_loss = pretraining.nt_xent
    calls = []

    def loss_that_explodes(z, temperature, group=None):
        calls.append(1)
        loss = real_loss(z, temperature, group)
        if len(calls) == 5:
            loss.data[...] = numpy.nan
        return loss

    monkeypatch.setattr(pretraining, "nt_xent", loss_that_explodes)
    with pytest.raises(train.TrainingDiverged, match="at step 5"):  # as metrics.jsonl counts
        run(tmp_path)
    assert parameters(tmp_path)[2] == 3  # the end-of-epoch checkpoint is intact


def test_cupy_backend_without_cupy_says_how_to_install(tmp_path, monkeypatch):
    from autograd import backend
    monkeypatch.setattr(backend, "_cupy", False)
    with pytest.raises(RuntimeError, match=r"cuda12"):
        run(tmp_path, "--backend", "cupy")


def test_linear_eval_leaves_the_encoder_unchanged_and_writes_json(tmp_path, monkeypatch):
    """The encoder linear_eval evaluated (the model its build_model made, read after the
    evaluation) holds the checkpoint's weights and running statistics; the JSON holds the
    k-NN vote on the held-out split (against a vote written out here) and the probe's (train,
    held-out) top-1 as linear_train_accuracy and linear_accuracy."""
    run(tmp_path)
    before, _, _ = parameters(tmp_path)
    built, knn_calls, probe_calls = [], [], []
    monkeypatch.setattr(linear_eval, "build_model",
                        lambda *args: built.append(build_model(*args)) or built[-1])
    monkeypatch.setattr(linear_eval, "knn_accuracy", recording(knn_calls, knn_accuracy))
    monkeypatch.setattr(linear_eval, "linear_probe", recording(probe_calls, linear_probe))
    data = ["--dataset", "synthetic", "--synthetic-size", "48", "--epochs", "3"]
    assert linear_eval.main(["--checkpoint", str(tmp_path)] + data) == 0
    after = built[0].state_dict()
    for name in before:
        if name.startswith("encoder."):
            numpy.testing.assert_array_equal(before[name], after[name], err_msg=name)
    result = json.load(open(tmp_path / "linear_eval.json"))
    assert result["feature_dim"] == 32  # 512 * 1/16
    (train_features, train_labels, test_features, test_labels), options, _ = knn_calls[0]
    assert (len(train_labels), len(test_labels)) == (result["train_images"],
                                                     result["test_images"])
    winners, clear = knn_vote(train_features, train_labels, test_features, result["knn_k"], 0.1,
                              options["num_classes"])
    assert abs(result["knn_accuracy"] - (winners == test_labels).mean()) <= (~clear).mean()
    args, _, (train_top1, test_top1) = probe_calls[0]
    assert all(a is b for a, b in zip(args, knn_calls[0][0]))  # the same features and labels
    assert (result["linear_train_accuracy"], result["linear_accuracy"]) == (train_top1, test_top1)
    for accuracy, count in ((train_top1, len(train_labels)), (test_top1, len(test_labels))):
        assert accuracy * count == pytest.approx(round(accuracy * count))  # a share of images


def test_knn_monitor_draws_its_memory_bank_from_every_class(monkeypatch):
    from simclr.data import ImageDataset
    images = numpy.zeros((40, 8, 8, 3), dtype=numpy.uint8)
    labels = numpy.repeat(numpy.arange(4), 10)  # sorted by class, as a folder loads them
    bank_labels = []
    monkeypatch.setattr(pretraining, "encode",
                        lambda encoder, batch: numpy.ones((len(batch), 2)))
    monkeypatch.setattr(pretraining, "knn_accuracy",
                        lambda memory, memory_labels, *rest, **options:
                        bank_labels.append(memory_labels.tolist()) or 0.0)
    data = ImageDataset(images, labels, list("abcd"))
    pretraining.monitor_knn(type("Model", (), {"encoder": None}), data, data, max_train=12)
    assert len(bank_labels[0]) == 12 and set(bank_labels[0]) == {0, 1, 2, 3}


def test_a_float32_training_step_never_makes_a_float64_array(monkeypatch):
    """Every op's output and every gradient of a whole SimCLR step stays float32."""
    from autograd import Function
    from autograd import engine
    from simclr.augment import SimCLRAugment

    config = vars(train.parse_args(TINY))
    model = build_model(config, 32)
    optimizer = pretraining.build_optimizer(config, model)
    dtypes = set()
    real_apply = Function.apply.__func__

    def recording_apply(cls, *inputs, **params):
        out = real_apply(cls, *inputs, **params)
        dtypes.add((cls.__name__, str(out.dtype)))
        return out

    real_backward = engine.backward

    def recording_backward(root, grad):
        real_backward(root, grad)
        dtypes.update(("grad", str(p.grad.dtype)) for p in model.parameters() if p.grad is not None)

    monkeypatch.setattr(Function, "apply", classmethod(recording_apply))
    monkeypatch.setattr(engine, "backward", recording_backward)
    images = numpy.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=numpy.uint8)
    pretraining.training_step(model, optimizer,
                              SimCLRAugment(size=32, color_strength=0.5, blur=False),
                              images, numpy.random.default_rng(1), 0.1, 0.5)
    # the recording saw the step: the layers' ops, the loss's (Normalize, BlockedNTXent),
    # the parameters' gradients
    assert len(dtypes) >= 8 and ("grad", "float32") in dtypes, sorted(dtypes)
    assert {dtype for _, dtype in dtypes} == {"float32"}, sorted(dtypes)
    assert all(p.dtype == numpy.float32 for p in model.parameters())
    assert all(buffer.dtype == numpy.float32 for buffer in optimizer.momentum_buffers)


def test_threads_flag_sets_the_pool_and_is_not_saved_with_the_run(tmp_path, capsys):
    from nn.runtime import threads
    before = threads.get_num_threads()
    try:
        assert train.main(TINY + ["--out", str(tmp_path), "--max-steps", "1", "--threads", "1"]) == 0
        assert threads.get_num_threads() == 1
        assert "threads" not in json.load(open(tmp_path / "config.json"))
        capsys.readouterr()
        assert train.main(TINY + ["--out", str(tmp_path / "bad"), "--threads", "0"]) == 2
        assert capsys.readouterr().err == ("python -m simclr.train: error: --threads must be at "
                                           "least 1, got 0\n")
    finally:
        threads.set_num_threads(before)
