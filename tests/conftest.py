import os
from pathlib import Path

import pytest

# albumentations checks the network for updates at import; tests never touch the network.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]


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


def compose_infer(*overrides: str):
    """The `infer.py` config with overrides, composed the way Hydra does."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="infer", overrides=list(overrides))
