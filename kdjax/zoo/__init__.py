"""Networks by name: the tutorial's two and the CIFAR zoo of the distillation benchmarks (RepDistiller, mdistiller).

    from kdjax import zoo
    teacher = zoo.network("resnet56", num_classes=100)   # a kdjax.network.Network
    zoo.names()                                          # every name, the tutorial's first

Each zoo network is a `flax.linen` module with BatchNorm (PyTorch's semantics, its statistics
the network's state), parameters named after the PyTorch definition's `state_dict` keys
(`kdjax.convert.from_torch` loads the benchmarks' checkpoints) and the roles the methods read:
`feature_map` (the last stage's output), `pooled` (the penultimate vector), `stageK` and,
where the references take them, `preactK` (before the last ReLU). The CIFAR networks are made for 32x32 RGB
images; the ImageNet ones (`kdjax.zoo.imagenet`: torchvision's `resnet18/34/50`, mdistiller's `mobilenetv1`) for
224x224 ones, and load torchvision's released `state_dict` files.

The language models take token ids `[batch, time]` and give next-token logits `[batch, time, vocab]`;
`num_classes` is the vocabulary size: `causal_conv_*` (`kdjax.zoo.language`) and the transformers
`gpt2_DxL` / `llama_DxL` (`kdjax.zoo.transformer`: width D, L blocks; roles `block{i}`, `attention{i}`).
`transformer_network` makes one of any size (`kdjax.hf` reads Hugging Face checkpoints into it).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping

import jax.numpy as jnp
from flax import linen as nn

from kdjax.zoo.tutorial import IMAGE_SHAPE
from kdjax.network import Network, linen_network
from kdjax.sampling import sample_with_cache
from kdjax.zoo.tutorial import tutorial_student, tutorial_teacher
from kdjax.zoo import imagenet, language, mobilenetv2, resnet, shufflenet, transformer, vgg, wrn

TUTORIAL = {"deepnn": tutorial_teacher, "lightnn": tutorial_student}
# name -> (module constructor taking num_classes, roles)
ZOO: dict[str, tuple[Callable[..., nn.Module], Mapping[str, str]]] = {
    **{name: (make, resnet.ROLES) for name, make in resnet.NETWORKS.items()},
    **{name: (make, wrn.ROLES) for name, make in wrn.NETWORKS.items()},
    **{name: (make, vgg.roles(name)) for name, make in vgg.NETWORKS.items()},
    **{name: (make, mobilenetv2.ROLES) for name, make in mobilenetv2.NETWORKS.items()},
    **{name: (make, shufflenet.ROLES) for name, make in shufflenet.NETWORKS.items()},
    **{name: (make, imagenet.ROLES) for name, make in imagenet.NETWORKS.items()},
    **{name: (make, {}) for name, make in language.NETWORKS.items()},
    **{name: (make, {}) for name, make in transformer.NETWORKS.items()},  # roles: `transformer.roles(config)`
}
LANGUAGE_MODELS = (*language.NETWORKS, *transformer.NETWORKS)


def names() -> list[str]:
    """Every network name `network` knows: the tutorial's two, then the zoo's."""
    return [*TUTORIAL, *ZOO]


def module(name: str, *, num_classes: int = 10) -> nn.Module:
    """The zoo network `name`'s `flax.linen` module, called as `module(images, train=...) -> logits`."""
    if name not in ZOO:
        raise ValueError(f"unknown network {name!r}; the zoo has: {', '.join(ZOO)}")
    return ZOO[name][0](num_classes=num_classes)


def network(name: str, *, num_classes: int = 10, input_shape: tuple[int, ...] = IMAGE_SHAPE) -> Network:
    """The network called `name` (see `names()`), with a head of `num_classes`, for examples of `input_shape`
    (images `[height, width, channels]`: the zoo's networks take any, the tutorial's 32x32x3 only; a
    language model's `[time]`)."""
    input_shape = tuple(input_shape)
    if name in TUTORIAL:
        if input_shape != IMAGE_SHAPE:
            raise ValueError(f"{name} is the tutorial's network for 32x32x3 images, not {'x'.join(map(str, input_shape))};"
                             " pick a zoo network (e.g. resnet20) for these")
        return TUTORIAL[name](num_classes=num_classes)
    if name not in ZOO:
        raise ValueError(f"unknown network {name!r}; known: {', '.join(names())}")
    is_language_model = name in LANGUAGE_MODELS
    if is_language_model != (len(input_shape) == 1):
        wanted = "token windows [time]" if is_language_model else "images [height, width, channels]"
        raise ValueError(f"{name} takes {wanted}, but the data's examples have shape {input_shape}; pick a "
                         f"{'zoo image network' if is_language_model else 'language model (gpt2_*, llama_*)'}")
    lm = module(name, num_classes=num_classes) if is_language_model else None
    if isinstance(lm, transformer.Transformer):
        return transformer_network(lm.config, time=input_shape[0], name=name)
    if lm is not None:
        return linen_network(lm, input_shape=input_shape, roles={}, train_argument=None, name=name,
                             input_dtype=jnp.int32, head=language.output_head(lm))
    return linen_network(module(name, num_classes=num_classes), input_shape=input_shape, roles=ZOO[name][1],
                         name=name)


def is_transformer(name: str) -> bool:
    """Whether zoo network `name` is a transformer (whose weights go in and out as Hugging Face folders)."""
    return name in transformer.NETWORKS


def transformer_network(config: transformer.TransformerConfig, *, time: int, name: str | None = None) -> Network:
    """A `Network` of `transformer.Transformer(config)` for windows of `time` tokens, with its roles and head."""
    if time > config.max_positions:
        raise ValueError(f"{name or config.layout} takes at most {config.max_positions} positions; use --window "
                         f"{config.max_positions} or less")
    network = linen_network(transformer.Transformer(config), input_shape=(time,), roles=transformer.roles(config),
                            train_argument=None, name=name or f"{config.layout}_{config.hidden_size}x{config.layers}",
                            input_dtype=jnp.int32, head=transformer.output_head(config))
    return dataclasses.replace(network, sample=functools.partial(sample_with_cache, config))


__all__ = ["is_transformer", "module", "names", "network", "transformer_network"]
