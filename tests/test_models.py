"""The particle network: encoders, shapes, ONNX export, topology rule, one-batch overfit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fracscope.models import (
    ENCODERS,
    NetConfig,
    ParticleModule,
    build_encoder,
    build_model,
    combine_class_with_topology,
    encoder_names,
)
from fracscope.scores import ClassScores, IoUAccumulator, cohen_kappa, confusion_matrix, porosity_errors_pp
from fracscope.types import Phase

pytestmark = pytest.mark.train  # the whole module needs the training stack (torch)

torch.set_num_threads(2)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "mobilenet_v3_large", "efficientnet_b0"])
def test_registered_encoder_shapes(name: str) -> None:
    net = build_model(NetConfig(encoder=name, in_channels=2)).eval()
    feats = net.encoder(torch.zeros(1, 2, 64, 64))
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]
    assert tuple(f.shape[1] for f in feats) == net.encoder.channels
    with torch.no_grad():
        cls, ph = net(torch.zeros(2, 2, 64, 64))
    assert cls.shape == (2, 3)
    assert ph.shape == (2, 4, 64, 64)


def test_every_registry_entry_builds_with_other_input_channels() -> None:
    assert {"resnet18", "resnet34", "mobilenet_v3_large", "efficientnet_b0"} <= set(ENCODERS)
    enc = build_encoder("mobilenet_v3_small", in_channels=3)
    assert len(enc(torch.zeros(1, 3, 64, 64))) == 5


def test_unknown_encoder_lists_valid_names() -> None:
    with pytest.raises(ValueError) as err:
        build_encoder("vgg_nonexistent")
    for name in encoder_names():
        assert name in str(err.value)


def test_onnx_export_matches_torch(tmp_path) -> None:
    import onnxruntime as ort
    net = build_model(NetConfig(encoder="resnet18", decoder_channels=(32, 16, 16, 8, 8))).eval()
    x = torch.rand(2, 2, 64, 64)
    path = tmp_path / "m.onnx"
    torch.onnx.export(net, (x,), str(path), input_names=["x"], output_names=["cls", "ph"],
                      dynamic_axes={"x": {0: "n"}}, dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    cls, ph = sess.run(None, {"x": x.numpy()})
    with torch.no_grad():
        tc, tp = net(x)
    np.testing.assert_allclose(cls, tc.numpy(), atol=1e-4)
    np.testing.assert_allclose(ph, tp.numpy(), atol=1e-4)


def _disc(s: int = 48) -> np.ndarray:
    yy, xx = np.mgrid[:s, :s]
    return (yy - s / 2) ** 2 + (xx - s / 2) ** 2 < (s / 2 - 4) ** 2


def test_topology_makes_split_particles_broken_and_defers_otherwise() -> None:
    mask = _disc()
    split = np.where(mask, Phase.SOLID, 0).astype(np.uint8)
    split[:, 23:25][mask[:, 23:25]] = Phase.CRACK  # a crack through the whole section
    partial = np.where(mask, Phase.SOLID, 0).astype(np.uint8)
    partial[20:28, 23:25] = Phase.CRACK  # a crack that leaves one body
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    phases = np.stack([split, partial, partial])
    masks = np.stack([mask] * 3)
    out = combine_class_with_topology(probs, phases, masks)
    # split -> broken despite the head; head says broken but one body -> mildly; head intact stays intact
    assert out.tolist() == [2, 1, 0]
    assert combine_class_with_topology(probs[0], split, mask) == 2


def test_scores() -> None:
    cm = confusion_matrix(np.array([0, 0, 1, 2, -1]), np.array([0, 1, 1, 2, 0]))
    assert cm.sum() == 4 and cm[0, 1] == 1
    s = ClassScores(cm)
    assert s.accuracy == pytest.approx(0.75)
    assert cohen_kappa(np.eye(3) * 5) == pytest.approx(1.0)
    true = np.zeros((1, 10, 10), np.uint8)
    true[0, 2:5, 2:5] = Phase.PORE  # 9 px pore
    true[0, 8, 8] = Phase.PORE  # 1 px pore: ignored with min_true_px=3
    pred = true.copy()
    pred[0, 8, 8] = Phase.SOLID
    acc = IoUAccumulator(Phase.PORE, min_true_px=3)
    acc.update(pred, true)
    assert acc.compute() == pytest.approx(1.0)
    mask = np.ones((1, 10, 10), bool)
    assert porosity_errors_pp(pred, true, mask)[0] == pytest.approx(-1.0)


def _synthetic_batch(n: int = 8, size: int = 64):
    """Real synthetic crops (fracscope.synth) through the shared crop function."""
    from fracscope import synth
    from fracscope.crop import CropSpec, crop_particle
    from fracscope.types import CLASS_NAMES

    cfg = synth.load_config("gp", ["crops.pixel_size_um=[0.06,0.06]"])
    xs, phases, masks, labels = [], [], [], []
    for item in synth.generate_crops(cfg, n, seed=3):
        c = crop_particle(item.image.pixels, item.instances, 1, CropSpec(size, 0.15), item.phases)
        xs.append(np.stack([c.image, c.mask]))
        phases.append(c.phases.astype(np.int64))
        masks.append(c.mask.astype(np.uint8))
        labels.append(CLASS_NAMES.index(item.particles[0].class_name))
    return {
        "x": torch.tensor(np.stack(xs)),
        "phases": torch.tensor(np.stack(phases)),
        "mask": torch.tensor(np.stack(masks)),
        "label": torch.tensor(labels),
    }


@pytest.mark.slow
def test_one_batch_overfit_reaches_perfect_class_and_pore_iou() -> None:
    torch.manual_seed(0)
    batch = _synthetic_batch(n=4)
    assert (batch["phases"] == Phase.PORE).any()
    module = ParticleModule({"encoder": "resnet18", "decoder_channels": [64, 32, 32, 16, 16], "dropout": 0.0})
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
    reached = None
    for step in range(150):
        module.train()
        cls, ph = module(batch["x"])
        loss = module.compute_loss(batch, cls, ph)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 5 == 4:
            with torch.no_grad():
                cls, ph = module(batch["x"])
            pred = ph.argmax(1)
            acc = (cls.argmax(1) == batch["label"]).float().mean().item()
            t, p = batch["phases"] == Phase.PORE, pred == Phase.PORE
            iou = ((t & p).sum() / (t | p).sum()).item()
            if acc == 1.0 and iou >= 0.9:
                reached = step
                break
    print("overfit reached at step", reached)
    assert reached is not None, f"after 150 steps: class acc {acc:.2f}, pore IoU {iou:.3f}"


def _small_module(**kwargs) -> ParticleModule:
    net = {"encoder": "resnet18", "decoder_channels": [32, 16, 16, 16, 8], "class_head": "phases", "dropout": 0.0}
    return ParticleModule(net, **kwargs)


def test_phase_map_class_head_leaves_the_segmentation_to_the_phase_loss() -> None:
    torch.manual_seed(0)
    module = _small_module()
    batch = _synthetic_batch(n=2)
    cls, _ = module(batch["x"])
    torch.nn.functional.cross_entropy(cls, batch["label"]).backward()
    head = {n for n, _ in module.net.named_parameters() if n.startswith("class_head.")}
    grads = {n: p.grad for n, p in module.net.named_parameters()}
    assert all(grads[n] is not None and grads[n].abs().sum() > 0 for n in head if n.endswith("weight"))
    assert all(g is None or g.abs().sum() == 0 for n, g in grads.items() if n not in head)


def test_freeze_segmentation_trains_only_the_class_head() -> None:
    torch.manual_seed(0)
    module = _small_module(freeze_segmentation=True)
    before = {k: v.clone() for k, v in module.net.state_dict().items()}
    batch = _synthetic_batch(n=2)
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    module.train()
    assert not module.net.encoder.training and module.net.class_head.training
    cls, ph = module(batch["x"])
    module.compute_loss(batch, cls, ph)["loss"].backward()
    opt.step()
    after = module.net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # Weights and BatchNorm statistics of everything but the class head stay as they were.
    assert changed and all(k.startswith("class_head.") for k in changed), sorted(changed)[:5]


def test_checkpoints_without_a_class_head_key_get_the_pooled_head() -> None:
    assert NetConfig().class_head == "phases"
    assert NetConfig.from_dict({"encoder": "resnet18"}).class_head == "pooled"
    with pytest.raises(ValueError, match="unknown class_head"):
        build_model(NetConfig(class_head="nope"))
