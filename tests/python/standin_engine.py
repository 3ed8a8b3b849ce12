"""A stand-in for an inference engine's model, for tests without vLLM or SGLang.

StandinLlama is a tiny Llama-shaped torch model (2 decoder layers, hidden 64 by default) whose
parameters are fused the way vLLM's and SGLang's Llama fuse them: `self_attn.qkv_proj.weight` is
cat(q, k, v) on dim 0 and `mlp.gate_up_proj.weight` is cat(gate, up). Its load_weights takes
Hugging Face names, as both engines' models do, and follows their `stacked_params_mapping`:
q_proj / k_proj / v_proj go to shards "q" / "k" / "v" of qkv_proj, gate_proj / up_proj to shards
0 / 1 of gate_up_proj; every other name must be a parameter. Each incoming tensor is copied into
the parameter immediately (`param.data[...].copy_(w)`), which is what makes zero-copy views from
ckpt_engine.Worker.receive safe to feed it.

hf_state_dict(config) builds a matching Hugging Face state dict with random values;
expected_parameters(config, state) what the fused parameters must hold after loading it;
process_weights_after_loading(model, model_config, target_device) stands in for vLLM's
post-load hook of the same signature and records its calls on the model.
"""

import collections
import dataclasses
from typing import Iterable, Set, Tuple

import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class StandinConfig:
    vocab_size: int = 96
    hidden_size: int = 64
    intermediate_size: int = 112
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    dtype: torch.dtype = torch.bfloat16

    @property
    def head_dim(self):
        return self.hidden_size // self.num_heads

    @property
    def q_size(self):
        return self.num_heads * self.head_dim

    @property
    def kv_size(self):
        return self.num_kv_heads * self.head_dim


def _param(shape, dtype, loader=None):
    p = nn.Parameter(torch.zeros(shape, dtype=dtype), requires_grad=False)
    p.weight_loader = loader if loader is not None else _default_loader
    return p


def _check_shape(name, what, got, want):
    if tuple(got) != tuple(want):
        raise ValueError(f"{name}: {what} has shape {tuple(got)}, expected {tuple(want)}")


def _default_loader(param, weight, name="?"):
    _check_shape(name, "the weight", weight.shape, param.shape)
    param.data.copy_(weight)


class _QKVLoader:
    """vLLM's QKVParallelLinear.weight_loader for one rank: shard "q", "k" or "v" of the rows."""

    def __init__(self, config):
        q, kv = config.q_size, config.kv_size
        self.offsets = {"q": (0, q), "k": (q, kv), "v": (q + kv, kv)}

    def __call__(self, param, weight, shard_id, name="?"):
        if shard_id not in self.offsets:
            raise ValueError(f"{name}: unknown qkv shard {shard_id!r}")
        start, size = self.offsets[shard_id]
        _check_shape(name, f"shard {shard_id}", weight.shape, (size,) + tuple(param.shape[1:]))
        param.data[start:start + size].copy_(weight)


class _MergedLoader:
    """vLLM's MergedColumnParallelLinear.weight_loader: shard i of equal-sized row blocks."""

    def __init__(self, size, count):
        self.size, self.count = size, count

    def __call__(self, param, weight, shard_id, name="?"):
        if not isinstance(shard_id, int) or not 0 <= shard_id < self.count:
            raise ValueError(f"{name}: unknown merged shard {shard_id!r}")
        _check_shape(name, f"shard {shard_id}", weight.shape, (self.size,) + tuple(param.shape[1:]))
        start = shard_id * self.size
        param.data[start:start + self.size].copy_(weight)


class _Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.qkv_proj = nn.Module()
        self.qkv_proj.weight = _param((c.q_size + 2 * c.kv_size, c.hidden_size), c.dtype,
                                      _QKVLoader(c))
        self.o_proj = nn.Module()
        self.o_proj.weight = _param((c.hidden_size, c.q_size), c.dtype)


class _MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gate_up_proj = nn.Module()
        self.gate_up_proj.weight = _param((2 * c.intermediate_size, c.hidden_size), c.dtype,
                                          _MergedLoader(c.intermediate_size, 2))
        self.down_proj = nn.Module()
        self.down_proj.weight = _param((c.hidden_size, c.intermediate_size), c.dtype)


class _DecoderLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.self_attn = _Attention(c)
        self.mlp = _MLP(c)
        self.input_layernorm = nn.Module()
        self.input_layernorm.weight = _param((c.hidden_size,), c.dtype)
        self.post_attention_layernorm = nn.Module()
        self.post_attention_layernorm.weight = _param((c.hidden_size,), c.dtype)


class StandinLlama(nn.Module):
    """The stand-in model. `post_load_calls` counts process_weights_after_loading calls."""

    # (fused parameter, checkpoint name, shard id): vLLM's LlamaModel.load_weights table.
    stacked_params_mapping = [
        (".qkv_proj", ".q_proj", "q"),
        (".qkv_proj", ".k_proj", "k"),
        (".qkv_proj", ".v_proj", "v"),
        (".gate_up_proj", ".gate_proj", 0),
        (".gate_up_proj", ".up_proj", 1),
    ]

    def __init__(self, config=StandinConfig()):
        super().__init__()
        self.config = config
        self.model = nn.Module()
        self.model.embed_tokens = nn.Module()
        self.model.embed_tokens.weight = _param((config.vocab_size, config.hidden_size),
                                                config.dtype)
        self.model.layers = nn.ModuleList(_DecoderLayer(config) for _ in range(config.num_layers))
        self.model.norm = nn.Module()
        self.model.norm.weight = _param((config.hidden_size,), config.dtype)
        self.lm_head = nn.Module()
        self.lm_head.weight = _param((config.vocab_size, config.hidden_size), config.dtype)
        self.post_load_calls = []
        self.loaded_names = []  # checkpoint names in the order load_weights saw them

    def load_weights(self, weights: Iterable[Tuple[str, torch.Tensor]]) -> Set[str]:
        """Loads (Hugging Face name, tensor) pairs; returns the parameter names loaded. Unknown
        names and shape mismatches raise ValueError naming the tensor."""
        params = dict(self.named_parameters())
        loaded = set()
        for name, weight in weights:
            self.loaded_names.append(name)
            if "rotary_emb.inv_freq" in name:
                continue
            for param_name, weight_name, shard_id in self.stacked_params_mapping:
                if weight_name not in name:
                    continue
                target = name.replace(weight_name, param_name)
                param = params.get(target)
                if param is None:
                    raise ValueError(f"unknown weight {name!r} (no parameter {target!r})")
                param.weight_loader(param, weight, shard_id, name=name)
                break
            else:
                target = name
                param = params.get(target)
                if param is None:
                    raise ValueError(f"unknown weight {name!r}")
                param.weight_loader(param, weight, name=name)
            loaded.add(target)
        return loaded


def process_weights_after_loading(model, model_config, target_device):
    """Stand-in for vllm.model_executor.model_loader.utils.process_weights_after_loading."""
    model.post_load_calls.append((model_config, target_device))


def hf_state_dict(config=StandinConfig(), seed=0):
    """A Hugging Face Llama state dict matching `config`, random values (an OrderedDict)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(config.dtype)

    c = config
    state = collections.OrderedDict()
    state["model.embed_tokens.weight"] = rand(c.vocab_size, c.hidden_size)
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        state[p + "self_attn.q_proj.weight"] = rand(c.q_size, c.hidden_size)
        state[p + "self_attn.k_proj.weight"] = rand(c.kv_size, c.hidden_size)
        state[p + "self_attn.v_proj.weight"] = rand(c.kv_size, c.hidden_size)
        state[p + "self_attn.o_proj.weight"] = rand(c.hidden_size, c.q_size)
        state[p + "mlp.gate_proj.weight"] = rand(c.intermediate_size, c.hidden_size)
        state[p + "mlp.up_proj.weight"] = rand(c.intermediate_size, c.hidden_size)
        state[p + "mlp.down_proj.weight"] = rand(c.hidden_size, c.intermediate_size)
        state[p + "input_layernorm.weight"] = rand(c.hidden_size)
        state[p + "post_attention_layernorm.weight"] = rand(c.hidden_size)
    state["model.norm.weight"] = rand(c.hidden_size)
    state["lm_head.weight"] = rand(c.vocab_size, c.hidden_size)
    return state


def hf_module(state, device=None):
    """A torch module whose named_parameters are the Hugging Face `state` (copies, on `device`
    when given): a trainer's model, as sync_weights takes it."""
    root = nn.Module()
    for name, value in state.items():
        *path, leaf = name.split(".")
        module = root
        for part in path:
            if part not in module._modules:
                module.add_module(part, nn.Module())
            module = module._modules[part]
        copy = value.clone() if device is None else value.to(device, copy=True)
        module.register_parameter(leaf, nn.Parameter(copy, requires_grad=False))
    return root


def expected_parameters(config, state):
    """{parameter name: tensor} the model must hold after loading the HF `state`."""
    out = {}
    for name, value in state.items():
        if ".q_proj." in name:
            base = name.replace(".q_proj.", ".qkv_proj.")
            out[base] = torch.cat([state[name], state[name.replace(".q_proj.", ".k_proj.")],
                                   state[name.replace(".q_proj.", ".v_proj.")]], dim=0)
        elif ".gate_proj." in name:
            base = name.replace(".gate_proj.", ".gate_up_proj.")
            out[base] = torch.cat([value, state[name.replace(".gate_proj.", ".up_proj.")]], dim=0)
        elif any(s in name for s in (".k_proj.", ".v_proj.", ".up_proj.")):
            continue
        else:
            out[name] = value
    return out
