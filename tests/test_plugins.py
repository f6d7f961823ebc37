"""The plug-in contract (docs/plugins.md) enforced where a user breaks it: each mistake is a PluginError
(a one-line usage error) or a warning naming what is wrong, never a torch traceback after training;
and a plug-in run resumes exactly."""

from __future__ import annotations

import contextlib
import sys
import warnings
from importlib import metadata

import pytest
import torch
from torch import nn

from bench import plugins, runner, suites
from bench.optim import Optim
from bench.suites import ClassifierJob, Suite
from models.classifier import ClassifierConfig
from tests.fixtures.interrupts import assert_resumed_like, interrupted_and_resumed

CONFIG = {"height": 8, "width": 8, "channels": 1, "num_classes": 10, "glimpses": 3, "per_step_loss": False}


class Glimpses(nn.Module):
    """A linear read of the whole image, repeated at every step; its output replaced by ``make``."""

    def __init__(self, make=None, windows=None):
        super().__init__()
        self.read = nn.Linear(64, 10)
        self.make, self.windows = make, windows

    def forward(self, x):
        logits = self.read(x.flatten(1)).unsqueeze(1).repeat(1, 3, 1)
        logits = self.make(logits) if self.make else logits
        if self.windows is None:
            return logits
        return type("Out", (), {"logits": logits, "windows": self.windows})()


def wrap(model) -> plugins.PluginModel:
    return plugins.PluginModel(model, "mine:build", CONFIG)


X, Y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])


@pytest.mark.parametrize("make, says", [
    (lambda z: z.argmax(-1, keepdim=True).expand(-1, -1, 10), "floating-point logits, got torch.int64"),
    (lambda z: z.detach(), "the logits carry no gradient"),
])
def test_logits_the_harness_cannot_train_on_are_refused(make, says):
    with pytest.raises(plugins.PluginError, match=says):
        wrap(Glimpses(make)).train()(X)


def test_logits_may_be_detached_in_evaluation():
    model = wrap(Glimpses(lambda z: z.detach())).eval()
    assert model(X).logits.shape == (4, 3, 10)  # eval mode, gradients enabled
    with torch.no_grad():
        assert model.train()(X).logits.shape == (4, 3, 10)  # training mode under no_grad


class OwnLoss(Glimpses):
    def __init__(self, loss):
        super().__init__()
        self.own = loss

    def loss(self, x, y):
        return self.own(self, x, y)


@pytest.mark.parametrize("loss, says", [
    (lambda m, x, y: nn.functional.cross_entropy(m(x)[:, -1], y, reduction="none"),
     r"one floating-point number as a 0-dimensional tensor .* got a tensor of shape \(4,\)"),
    (lambda m, x, y: nn.functional.cross_entropy(m(x)[:, -1], y).detach(), "carries no gradient"),
    (lambda m, x, y: 1.5, "got float"),
])
def test_an_own_loss_that_is_not_one_differentiable_number_is_refused(loss, says):
    with pytest.raises(plugins.PluginError, match=says):
        wrap(OwnLoss(loss)).train().loss(X, Y)


def test_probabilities_and_unusable_windows_are_warned_about_once():
    model = wrap(Glimpses(lambda z: z.softmax(-1))).train()
    with pytest.warns(UserWarning, match="look like probabilities"):
        model(X)
    with warnings_as_errors():
        model(X)  # once is enough
    with pytest.warns(UserWarning, match=r"\.windows must be a tensor \(B, T, 3\) = \(4, 3, 3\).*got \(4, 3\)"):
        out = wrap(Glimpses(windows=torch.zeros(4, 3))).train()(X)
    assert out.logits.shape == (4, 3, 10)
    with warnings_as_errors():  # logits and windows as the contract wants: nothing to say
        wrap(Glimpses(windows=torch.zeros(4, 3, 3))).train()(X)


@contextlib.contextmanager
def warnings_as_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


class Costed(Glimpses):
    def __init__(self, flops=None, params=None):
        super().__init__()
        if flops is not None:
            self.flops_per_image = flops
        if params is not None:
            self.param_count = params


@pytest.mark.parametrize("model, says", [
    (Costed(flops=lambda: 10), r"flops_per_image\(train=False\) failed with TypeError"),
    (Costed(flops=lambda train=False: "many"), r"flops_per_image\(train=False\) must return a whole number >= 0 or "
                                               r"None, got 'many'"),
    (Costed(params=lambda: None), r"param_count\(\) must return a whole number >= 0, got None"),
])
def test_cost_hooks_are_tried_when_the_model_is_built_not_after_training(model, says):
    with pytest.raises(plugins.PluginError, match=says):
        wrap(model)


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 2.7, -1, "12", True])
def test_cost_hooks_must_give_a_finite_whole_number(bad):
    with pytest.raises(plugins.PluginError, match=r"must return a whole number >= 0"):
        wrap(Costed(params=lambda: bad))


def test_cost_hooks_may_say_nothing_or_count():
    import numpy as np

    assert wrap(Costed(flops=lambda train=False: None)).flops_per_image() is None
    assert wrap(Costed(flops=lambda train=False: np.prod([2, 3]), params=lambda: torch.tensor(5))).param_count() == 5
    assert wrap(Costed(flops=lambda train=False: 6.0)).flops_per_image() == 6
    model = wrap(Costed(flops=lambda train=False: 300 if train else 100, params=lambda: 7))
    assert (model.flops_per_image(), model.flops_per_image(train=True), model.param_count()) == (100, 300, 7)


def test_build_returning_the_class_says_so():
    with pytest.raises(plugins.PluginError, match="returned the class Glimpses, not a torch nn.Module instance"):
        wrap(Glimpses)


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name, text):
        (tmp_path / f"{name}.py").write_text(text)
        sys.modules.pop(name, None)
        return tmp_path / f"{name}.py"

    return write


def test_a_module_that_fails_as_it_is_imported_is_named_with_its_line(user_modules):
    path = user_modules("broken_syntax", "def build(config):\n    return (\n")
    with pytest.raises(plugins.PluginError, match=rf"importing 'broken_syntax' failed with SyntaxError: .* at "
                                                  rf"{path}:\d"):
        plugins.load_builder("broken_syntax:build")
    path = user_modules("broken_import", "import not_installed_xyz\n")
    with pytest.raises(plugins.PluginError, match="the module imports 'not_installed_xyz', which is not installed"):
        plugins.load_builder("broken_import:build")
    user_modules("numpy_ext_xyz", "import numpy_ext\n")  # a missing package whose name starts the module's
    with pytest.raises(plugins.PluginError, match="the module imports 'numpy_ext', which is not installed"):
        plugins.load_builder("numpy_ext_xyz:build")
    path = user_modules("raises", "x = 1 / 0\n")
    with pytest.raises(plugins.PluginError, match=rf"ZeroDivisionError: division by zero at {path}:1"):
        plugins.load_builder("raises:build")


@pytest.mark.parametrize("given, dotted", [("mypkg/mine.py", "mypkg.mine"), ("./mine.py", "mine"),
                                           ("/home/u/mine.py", "mine"), ("mine.py", "mine")])
def test_a_file_path_is_answered_with_the_dotted_name(given, dotted):
    with pytest.raises(plugins.PluginError, match=rf"dotted import name, not a file path, e.g. {dotted}:build \("):
        plugins.load_builder(f"{given}:build")


def test_an_entry_point_that_does_not_load_is_a_plugin_error(monkeypatch):
    ep = metadata.EntryPoint(name="gone", value="no_such_package_xyz.models:build", group=plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins, "_entry_points", lambda: {"gone": ep})
    with pytest.raises(plugins.PluginError, match=r"entry point 'no_such_package_xyz.models:build' .* does not load "
                                                  r"\(ModuleNotFoundError"):
        plugins.load_builder("gone")


def test_an_empty_model_option_is_refused_not_ignored(capsys):
    from bench.cli import main

    assert main(["run", "--model", "", "--dry-run"]) == 2
    assert "--model needs module.path:build or an entry-point name" in capsys.readouterr().err


def test_a_plugin_keeps_only_the_targets_of_its_test_errors():
    kept = suites.with_plugin(suites.get("quick"), "examples.tiny_glimpse:build").targets
    assert kept and {t.metric for t in kept} == {"test_error"}
    # table1's targets are the soft-attention classifier's and RAM's, each naming its model: none is a plug-in's
    assert suites.with_plugin(suites.get("table1"), "m:build").targets == ()


TINY = suites.with_plugin(Suite(
    name="tiny-plugin", description="test suite", expected="seconds",
    jobs=(ClassifierJob(dataset="cluttered60", glimpses=(2,), per_step_loss=False,
                        model=ClassifierConfig(read_n=4, hidden=16), optim=Optim(batch_size=16), epochs=2,
                        train_limit=64, valid_limit=32, test_limit=32),)), "examples.tiny_glimpse:build")


def test_a_plugin_run_resumes_exactly(monkeypatch, tmp_path, mnist_data):
    """Interrupted in its second epoch and resumed (the task description of a plug-in is a plain dict,
    not a dataclass), it ends where an uninterrupted run ends."""
    from bench import tasks

    monkeypatch.setitem(suites.SUITES, TINY.name, TINY)

    def opts(name, **kw):
        return runner.RunOptions(suite=TINY.name, out=str(tmp_path / f"{name}.json"), threads=1, progress=False,
                                 checkpoint_dir=str(tmp_path / "ckpt"), **kw)

    ref, done = interrupted_and_resumed(monkeypatch, opts, tasks.PluginTask, 6)  # in epoch 2 of 4 batches
    assert_resumed_like(done, ref)
