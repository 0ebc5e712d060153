import itertools
import os
import re
import signal
from pathlib import Path

import pytest
from _pytest.mark.expression import Expression

# albumentations checks the network for updates at import; tests never touch the network.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]

# The training stack (torch, lightning, albumentations) is optional at inference: tests that need it
# carry the `train` marker, and `pytest -m "not train"` runs the rest without it installed.
TRAIN_MODULE = re.compile(r"^pytestmark = .*pytest\.mark\.train\b", re.M)
#: Fixtures that build their model with torch; a test that uses one needs the training stack.
TORCH_FIXTURES = {"random_onnx_model"}


def _deselects_train(config) -> bool:
    """True when the ``-m`` expression is false for every test marked `train`, whatever its other markers."""
    expr = config.getoption("markexpr")
    if not expr:
        return False
    compiled = Expression.compile(expr)
    others = sorted(set(re.findall(r"[\w.-]+", expr)) - {"and", "or", "not", "train"})
    return not any(
        compiled.evaluate(lambda name, on=on: name == "train" or name in on)
        for k in range(len(others) + 1)
        for on in map(set, itertools.combinations(others, k))
    )


def pytest_ignore_collect(collection_path: Path, config):
    """Under ``-m "not train"`` a module marked `train` as a whole is not even imported (it imports torch)."""
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_") and _deselects_train(config):
        return bool(TRAIN_MODULE.search(collection_path.read_text())) or None
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark `train` the tests that use a torch-built fixture, before `-m` deselects."""
    for item in items:
        if TORCH_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.train)


@pytest.fixture(autouse=True, scope="session")
def _ctrl_c_reaches_the_tests():
    """The Ctrl-C tests need SIGINT as a terminal delivers it. Under nohup (or any parent that ignores it)
    Python starts with SIGINT ignored and every child inherits that: restore Python's own handler."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield


@pytest.fixture(scope="module")
def synth_cache(tmp_path_factory):
    """A fresh $FRACSCOPE_CACHE for one test module: synthetic sets are generated once per module."""
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("FRACSCOPE_CACHE")
    os.environ["FRACSCOPE_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("FRACSCOPE_CACHE", None)
    else:
        os.environ["FRACSCOPE_CACHE"] = old


@pytest.fixture(scope="session")
def random_onnx_model(tmp_path_factory) -> Path:
    """A small untrained network exported like the shipped model (for plumbing tests only)."""
    import torch

    from fracscope.export import export_onnx
    from fracscope.model_file import ModelMetadata
    from fracscope.models import NetConfig, build_model

    torch.manual_seed(0)
    net = build_model(NetConfig(encoder="resnet18", decoder_channels=(32, 16, 16, 8, 8))).eval()
    path = tmp_path_factory.mktemp("model") / "random.onnx"
    meta = ModelMetadata(crop_size=64, margin=0.15, encoder="resnet18", pore_polarities=("dark",),
                         training_data="untrained (test fixture)")
    export_onnx(net, path, meta, crop_size=64)
    return path

