"""Fine-tuning from a shipped ONNX model file: its weights put back into the PyTorch network.

The export folds each BatchNorm into the convolution before it, and int8 files store weights as
int8 with a scale (QDQ). So the file's convolutions are matched to the network's, in the order the
network calls them, each weight dequantized; a BatchNorm right after a convolution gets the folded
bias and an identity transform (weight 1, running mean 0, running variance 1 - eps), so that in eval
mode the network computes what the file computes (int8 files: up to the activation rounding the
file adds). Training then updates the BatchNorm statistics again from the new data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

_CONV_OPS = ("Conv", "ConvTranspose", "Gemm")


def _values(graph) -> dict[str, np.ndarray]:
    """Every constant tensor of the graph by name: initializers, Constant nodes, dequantized weights."""
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == 4:  # a TENSOR attribute
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "DequantizeLinear" and node.input[0] in values:
            x = values[node.input[0]].astype(np.float32)
            scale = values[node.input[1]].astype(np.float32)
            zero = values[node.input[2]].astype(np.float32) if len(node.input) > 2 and node.input[2] else 0.0
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if np.ndim(scale) == 1 and x.ndim > 1:  # per channel along `axis`
                shape = [-1 if i == axis % x.ndim else 1 for i in range(x.ndim)]
                scale = scale.reshape(shape)
                zero = np.reshape(zero, shape) if np.ndim(zero) == 1 else zero
            values[node.output[0]] = (x - zero) * scale
    return values


def module_path(node_name: str) -> str | None:
    """The network module an exported node came from: ``/net/encoder/stages.1/stages.1.1/conv1/Conv`` →
    ``encoder.stages.1.conv1`` style paths (the exporter's scope names; None when the name has none)."""
    parts: list[str] = []
    comps = [c for c in node_name.strip("/").split("/")[:-1] if c]
    if comps and comps[0] == "net":
        comps = comps[1:]
    for comp in comps:
        if parts and comp.startswith(parts[-1] + "."):  # a child of a Sequential/ModuleList: "stages.1.1"
            parts[-1] = comp
        else:
            parts.append(comp)
    return ".".join(parts) or None


def onnx_layers(path: str | Path) -> list[tuple[str | None, np.ndarray, np.ndarray | None]]:
    """(module path, weight, bias) of every Conv, ConvTranspose and Gemm of the file, in graph order (Gemm
    weights as (out, in)); the path from the node's name, None where it has none."""
    import onnx

    graph = onnx.load(str(path)).graph
    values = _values(graph)
    layers = []
    for node in graph.node:
        if node.op_type not in _CONV_OPS:
            continue
        weight = values.get(node.input[1])
        if weight is None:
            raise ValueError(f"{path}: the weight of {node.op_type} {node.name!r} is computed, not stored")
        bias = values.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if node.op_type == "Gemm" and not next((a.i for a in node.attribute if a.name == "transB"), 0):
            weight = weight.T
        layers.append((module_path(node.name), weight, bias))
    return layers


def _call_order(net: torch.nn.Module, example: torch.Tensor) -> list[tuple[str, torch.nn.Module]]:
    """Convolutions, linear layers and BatchNorms in the order one forward pass calls them."""
    names = {m: n for n, m in net.named_modules()}
    order: list[tuple[str, torch.nn.Module]] = []
    kinds = (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear, torch.nn.BatchNorm2d)
    hooks = [m.register_forward_hook(lambda m, *_: order.append((names[m], m)))
             for m in net.modules() if isinstance(m, kinds)]
    try:
        was_training = net.training
        net.eval()
        with torch.no_grad():
            net(example)
        net.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    return order


def state_dict_from_onnx(net: torch.nn.Module, path: str | Path, example: torch.Tensor) -> dict[str, torch.Tensor]:
    """The state-dict entries of `net` that the ONNX file `path` fixes (see the module docstring).

    `example` is an input `net` takes (its values do not matter; one pass records the call order).

    Raises
    ------
    ValueError
        When the file's layers do not line up with the network's (another architecture).
    """
    layers = onnx_layers(path)
    order = _call_order(net, example)
    position = {name: i for i, (name, _) in reversed(list(enumerate(order)))}
    convs = [(i, n, m) for i, (n, m) in enumerate(order) if not isinstance(m, torch.nn.BatchNorm2d)]
    if len(convs) != len(layers):
        raise ValueError(f"{path} has {len(layers)} convolution/linear layers, the network calls {len(convs)}: "
                         "not the same architecture (encoder, decoder channels)")
    if all(name in position for name, _, _ in layers):  # matched by the exporter's scope names
        pairs = [((position[name], name, order[position[name]][1]), layer) for name, *layer in layers]
    else:  # no usable names: the graph's order is the call order
        pairs = [(conv, layer) for conv, (_, *layer) in zip(convs, layers, strict=True)]
    out: dict[str, torch.Tensor] = {}
    for (i, name, module), (weight, bias) in pairs:
        if tuple(module.weight.shape) != weight.shape:
            raise ValueError(f"{path}: weight {weight.shape} does not fit {name}.weight "
                             f"{tuple(module.weight.shape)}: not the same architecture")
        out[f"{name}.weight"] = torch.tensor(np.asarray(weight, np.float32))
        follower = order[i + 1][1] if i + 1 < len(order) else None
        if isinstance(follower, torch.nn.BatchNorm2d) and module.bias is None:  # folded into this weight
            bn_name, channels = order[i + 1][0], follower.num_features
            out[f"{bn_name}.weight"] = torch.ones(channels)
            out[f"{bn_name}.bias"] = torch.tensor(np.asarray(bias, np.float32)) if bias is not None \
                else torch.zeros(channels)
            out[f"{bn_name}.running_mean"] = torch.zeros(channels)
            out[f"{bn_name}.running_var"] = torch.full((channels,), 1.0 - follower.eps)
        elif module.bias is not None:
            out[f"{name}.bias"] = torch.tensor(np.asarray(bias, np.float32)) if bias is not None \
                else torch.zeros(module.bias.shape)
    return out


__all__ = ["module_path", "onnx_layers", "state_dict_from_onnx"]
