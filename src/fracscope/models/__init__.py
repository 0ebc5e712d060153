"""The multi-task particle CNN: encoder registry, U-Net with class + phase heads, training."""

from fracscope.models.encoders import ENCODERS, build_encoder, encoder_names
from fracscope.models.module import ParticleModule
from fracscope.classify import combine_class_with_topology
from fracscope.models.unet import NetConfig, ParticleNet, build_model

__all__ = [
    "ENCODERS",
    "NetConfig",
    "ParticleModule",
    "ParticleNet",
    "build_encoder",
    "build_model",
    "combine_class_with_topology",
    "encoder_names",
]
