"""Regenerate `hf_reference.npz`: tiny random `transformers` models' weights, outputs and gradients.

    pip install -e ".[reference]" && python tests/reference/make_hf_reference.py

Three models, built locally from seeded random weights (no hub access): a GPT-2 layout, a Llama layout with
grouped-query attention, and a tied-head Llama with one key/value head and Llama 3's RoPE scaling. For each, on
one batch of token ids: the state_dict (float32, `transformers`' names), config.json's dict, the names
`save_pretrained` writes, the logits in float32 and float64, and in float64 every block's output (forward
hooks), every layer's attention probabilities (eager attention), the final norm's output, and the gradient of
the mean next-token cross-entropy with respect to every parameter.
"""

from __future__ import annotations

import json
import pathlib
import tempfile

import numpy as np
import torch
import transformers
from safetensors.numpy import load_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

OUT = pathlib.Path(__file__).parent / "hf_reference.npz"
VOCAB, TIME, BATCH = 96, 12, 2


def models() -> dict[str, torch.nn.Module]:
    eager = {"attn_implementation": "eager"}
    llama = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=64, **eager)
    llama3_rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8}
    return {
        "gpt2": GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                           bos_token_id=0, eos_token_id=0, **eager)),
        "llama": LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, **llama)),
        "llama3_tied": LlamaForCausalLM(LlamaConfig(num_key_value_heads=1, tie_word_embeddings=True,
                                                    rope_parameters=llama3_rope, **llama)),
    }


def blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    return model.transformer.h if hasattr(model, "transformer") else model.model.layers


def final_norm(model: torch.nn.Module) -> torch.nn.Module:
    return model.transformer.ln_f if hasattr(model, "transformer") else model.model.norm


def main() -> None:
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    tokens = np.random.default_rng(0).integers(0, VOCAB, (BATCH, TIME + 1))
    out: dict[str, np.ndarray] = {"tokens": tokens}
    for name, model in models().items():
        model.eval()
        for key, value in model.state_dict().items():
            out[f"{name}/weights/{key}"] = value.numpy().astype(np.float32)
        out[f"{name}/config"] = np.array(json.dumps(model.config.to_dict()))
        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            out[f"{name}/saved_names"] = np.array(sorted(load_file(pathlib.Path(folder) / "model.safetensors")))
        inputs, labels = torch.tensor(tokens[:, :-1]), torch.tensor(tokens[:, 1:])
        with torch.no_grad():
            out[f"{name}/logits32"] = model(inputs).logits.numpy()
        model.double()
        captured: dict[str, torch.Tensor] = {}
        hooks = [module.register_forward_hook(lambda _m, _i, o, key=key: captured.__setitem__(
                     key, o[0] if isinstance(o, tuple) else o))
                 for key, module in [*((f"block{i}", b) for i, b in enumerate(blocks(model))),
                                     ("head_input", final_norm(model))]]
        result = model(inputs, output_attentions=True)
        for hook in hooks:
            hook.remove()
        loss = torch.nn.functional.cross_entropy(result.logits.reshape(-1, VOCAB), labels.reshape(-1))
        loss.backward()
        out[f"{name}/logits64"] = result.logits.detach().numpy()
        out[f"{name}/loss64"] = loss.detach().numpy()
        for key, tensor in captured.items():
            out[f"{name}/role/{key}"] = tensor.detach().numpy()
        for index, attention in enumerate(result.attentions):
            out[f"{name}/role/attention{index}"] = attention.detach().numpy()
        for key, parameter in model.named_parameters():
            out[f"{name}/grad/{key}"] = parameter.grad.numpy()
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes, torch {torch.__version__}, "
          f"transformers {transformers.__version__})")


if __name__ == "__main__":
    main()
