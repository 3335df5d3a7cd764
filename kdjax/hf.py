"""Hugging Face `transformers` checkpoints in and out: GPT-2 and Llama layouts (`kdjax.zoo.transformer`).

    config, params = hf.load_pretrained("path/to/folder")      # config.json + model.safetensors; no torch
    config, params = hf.from_transformers(model)                # a GPT2LMHeadModel / LlamaForCausalLM
    hf.save_pretrained("out", config, params)                   # AutoModelForCausalLM.from_pretrained("out")

Parameters are matched by name (`transformer.h.0.attn.c_attn.weight` -> `h_0/attn/c_attn/kernel`): a
checkpoint that lacks one, has one the config does not make, or has one of another shape is refused in
one line. PyTorch `nn.Linear` weights `[out, in]` are transposed; GPT-2's `Conv1D` weights are `[in, out]`
already. Reading needs the `safetensors` package (`pip install "kdjax[hf]"`), never torch.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.atomic import whole_folder
from kdjax.zoo.transformer import Transformer, TransformerConfig

CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE = "config.json", "model.safetensors", "model.safetensors.index.json"
_ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}
_BUFFERS = re.compile(r"\.attn\.(bias|masked_bias)$|rotary_emb\.inv_freq$")  # old GPT-2 masks, RoPE tables


class CheckpointFormatError(ValueError):
    """A checkpoint folder or state_dict that does not match what its config.json says."""


def config_from_hf(hf: Mapping[str, Any]) -> TransformerConfig:
    """A `TransformerConfig` from a `transformers` config (`config.json`'s dict), refusing what the layouts
    do not implement."""
    kind = hf.get("model_type")
    if kind == "gpt2":
        unsupported = {"activation_function": hf.get("activation_function", "gelu_new") not in ("gelu_new",),
                       "scale_attn_by_inverse_layer_idx": hf.get("scale_attn_by_inverse_layer_idx", False),
                       "scale_attn_weights": not hf.get("scale_attn_weights", True),
                       "add_cross_attention": hf.get("add_cross_attention", False)}
        _refuse(unsupported, kind)
        return TransformerConfig("gpt2", hf["vocab_size"], hf["n_embd"], hf["n_layer"], hf["n_head"],
                                 intermediate_size=hf.get("n_inner"), max_positions=hf["n_positions"],
                                 norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                                 tie_embeddings=hf.get("tie_word_embeddings", True))
    if kind == "llama":
        rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        _refuse({"hidden_act": hf.get("hidden_act", "silu") != "silu",
                 f"rope type {rope_type!r}": rope_type not in ("default", "llama3")}, kind)
        scaling = None
        if rope_type == "llama3":
            scaling = (float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"]),
                       int(rope["original_max_position_embeddings"]))
        return TransformerConfig("llama", hf["vocab_size"], hf["hidden_size"], hf["num_hidden_layers"],
                                 hf["num_attention_heads"], kv_heads=hf.get("num_key_value_heads"),
                                 intermediate_size=hf["intermediate_size"],
                                 max_positions=hf.get("max_position_embeddings", 2048),
                                 norm_eps=hf.get("rms_norm_eps", 1e-6), head_dim=hf.get("head_dim"),
                                 tie_embeddings=hf.get("tie_word_embeddings", False),
                                 rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
                                 rope_scaling=scaling, attention_bias=hf.get("attention_bias", False),
                                 mlp_bias=hf.get("mlp_bias", False))
    raise CheckpointFormatError(f"model_type {kind!r} is not a layout kdjax has; it reads gpt2 and llama")


def _refuse(unsupported: Mapping[str, bool], kind: str) -> None:
    found = [name for name, bad in unsupported.items() if bad]
    if found:
        raise CheckpointFormatError(f"this {kind} config sets {found[0]}, which kdjax's {kind} layout does not "
                                    "implement")


def config_to_hf(config: TransformerConfig) -> dict[str, Any]:
    """`config.json`'s dict for `config`: what `transformers.AutoConfig` reads back."""
    common = {"architectures": [_ARCHITECTURES[config.layout]], "model_type": config.layout,
              "vocab_size": config.vocab_size, "tie_word_embeddings": config.tied, "dtype": "float32"}
    if config.layout == "gpt2":
        return {**common, "n_embd": config.hidden_size, "n_layer": config.layers, "n_head": config.heads,
                "n_inner": config.intermediate_size, "n_positions": config.max_positions,
                "layer_norm_epsilon": config.norm_eps, "activation_function": "gelu_new",
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling is not None:
        factor, low, high, original = config.rope_scaling
        rope |= {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
                 "original_max_position_embeddings": original}
    return {**common, "hidden_size": config.hidden_size, "num_hidden_layers": config.layers,
            "num_attention_heads": config.heads, "num_key_value_heads": config.kv_heads_,
            "head_dim": config.head_dim_, "intermediate_size": config.intermediate_size_,
            "max_position_embeddings": config.max_positions, "rms_norm_eps": config.norm_eps,
            "hidden_act": "silu", "rope_theta": config.rope_theta, "rope_parameters": rope,
            "rope_scaling": None if config.rope_scaling is None else rope,
            "attention_bias": config.attention_bias, "mlp_bias": config.mlp_bias}


def _hf_name(config: TransformerConfig, path: tuple[str, ...]) -> tuple[str, bool]:
    """A Flax parameter path -> (its `transformers` name, whether it is transposed there)."""
    *modules, leaf = path
    block = config.names["block"]
    parts = [re.sub(rf"^{block}_(\d+)$", rf"{block}.\1", part) for part in modules]
    prefix = "" if modules == ["lm_head"] else ("transformer." if config.layout == "gpt2" else "model.")
    name = prefix + ".".join(parts) + "." + {"kernel": "weight", "embedding": "weight", "scale": "weight",
                                             "bias": "bias"}[leaf]
    return name, leaf == "kernel" and config.layout == "llama"


def _expected(config: TransformerConfig) -> dict[str, tuple[tuple[str, ...], tuple[int, ...], bool]]:
    """`transformers` name -> (Flax path, shape in PyTorch's layout, transposed) for every parameter."""
    shapes = jax.eval_shape(Transformer(config).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
    expected = {}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        path = tuple(entry.key for entry in key_path)
        name, transposed = _hf_name(config, path)
        expected[name] = (path, tuple(reversed(leaf.shape)) if transposed else tuple(leaf.shape), transposed)
    return expected


def params_from_state_dict(config: TransformerConfig, state_dict: Mapping[str, Any], *,
                           dtype: Any = jnp.float32) -> dict[str, Any]:
    """Flax params of `Transformer(config)` from a `transformers` state_dict (numpy arrays or torch tensors).

    Raises:
      CheckpointFormatError: a missing, unknown or wrongly shaped parameter, named.
    """
    expected = _expected(config)
    given = {key: value for key, value in state_dict.items() if not _BUFFERS.search(key)}
    if config.tied:
        given.pop("lm_head.weight", None)  # the embedding itself, listed twice by state_dict()
    unknown, missing = sorted(set(given) - set(expected)), sorted(set(expected) - set(given))
    if unknown or missing:
        raise CheckpointFormatError(f"the weights do not match the config ({config.layout}, {config.layers} layers, "
                                    f"d {config.hidden_size}): unknown {unknown[:3] or 'none'}, missing "
                                    f"{missing[:3] or 'none'}")
    params: dict[str, Any] = {}
    for name, (path, shape, transposed) in expected.items():
        array = _numpy(given[name])
        if array.shape != shape:
            raise CheckpointFormatError(f"{name} has shape {array.shape}; the config makes it {shape}")
        node = params
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = jnp.asarray(array.T if transposed else array, dtype)
    return params


def state_dict_from_params(config: TransformerConfig, params: Mapping[str, Any], *, dtype: Any = np.float32
                           ) -> dict[str, np.ndarray]:
    """The inverse of `params_from_state_dict`: `transformers` names -> numpy arrays, PyTorch layout."""
    out = {}
    for name, (path, _, transposed) in _expected(config).items():
        node = params
        for part in path:
            node = node[part]
        array = np.asarray(node, dtype)
        out[name] = np.ascontiguousarray(array.T if transposed else array)
    return out


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor; bfloat16 has no numpy twin, float32 holds it exactly
        value = value.detach().cpu()
        value = (value.float() if str(value.dtype) == "torch.bfloat16" else value).numpy()
    return np.asarray(value)


def read_config(directory: str | os.PathLike) -> TransformerConfig:
    """The `TransformerConfig` of the checkpoint folder `directory` (its config.json)."""
    path = pathlib.Path(directory).expanduser() / CONFIG_FILE
    try:
        return config_from_hf(json.loads(path.read_text()))
    except FileNotFoundError:
        raise CheckpointFormatError(f"{path.parent} has no {CONFIG_FILE}: a Hugging Face checkpoint folder holds "
                                    f"{CONFIG_FILE} and {WEIGHTS_FILE}") from None
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointFormatError(f"{path}: not a transformers config ({type(error).__name__}: {error})") from None


def load_pretrained(directory: str | os.PathLike, *, dtype: Any = jnp.float32
                    ) -> tuple[TransformerConfig, dict[str, Any]]:
    """(config, Flax params) from a `save_pretrained` folder: config.json and model.safetensors (or the shards
    model.safetensors.index.json lists), read with safetensors' NumPy loader."""
    directory = pathlib.Path(directory).expanduser()
    config = read_config(directory)
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise CheckpointFormatError("reading model.safetensors needs the safetensors package: "
                                    'pip install "kdjax[hf]"') from None
    if (directory / INDEX_FILE).is_file():
        files = sorted(set(json.loads((directory / INDEX_FILE).read_text())["weight_map"].values()))
    elif (directory / WEIGHTS_FILE).is_file():
        files = [WEIGHTS_FILE]
    else:
        raise CheckpointFormatError(f"{directory} has no {WEIGHTS_FILE}; save the model with transformers' "
                                    "save_pretrained(folder, safe_serialization=True)")
    state_dict: dict[str, np.ndarray] = {}
    for name in files:
        try:
            state_dict |= load_file(directory / name)
        except Exception as error:  # safetensors raises its own SafetensorError for a truncated file
            raise CheckpointFormatError(f"{directory / name}: not a readable safetensors file ({error})") from None
    return config, params_from_state_dict(config, state_dict, dtype=dtype)


def from_transformers(model: Any, *, dtype: Any = jnp.float32) -> tuple[TransformerConfig, dict[str, Any]]:
    """(config, Flax params) of a `transformers` `GPT2LMHeadModel` or `LlamaForCausalLM` in memory."""
    config = config_from_hf(model.config.to_dict())
    return config, params_from_state_dict(config, model.state_dict(), dtype=dtype)


def save_pretrained(directory: str | os.PathLike, config: TransformerConfig, params: Mapping[str, Any]) -> None:
    """Write config.json and model.safetensors (float32) to `directory`, which
    `transformers.AutoModelForCausalLM.from_pretrained` and `load_pretrained` read. The folder appears whole
    or not at all: it is written beside and then renamed (an existing one is replaced)."""
    from safetensors.numpy import save_file

    with whole_folder(pathlib.Path(directory).expanduser()) as partial:
        (partial / CONFIG_FILE).write_text(json.dumps(config_to_hf(config), indent=2) + "\n")
        save_file(state_dict_from_params(config, params), partial / WEIGHTS_FILE, metadata={"format": "pt"})


def is_checkpoint_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder with a config.json (a Hugging Face checkpoint)."""
    return (pathlib.Path(path).expanduser() / CONFIG_FILE).is_file()
