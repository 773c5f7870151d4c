"""Survey: estimate vs measured KV cache bytes for every causal-LM architecture transformers knows.

For each model type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, build a tiny random-weights model from its config class
(shrunk: 2 layers, hidden 64, 4 heads, 2 KV heads, window 8, ...), run ``generate`` over a few scenarios and
compare ``cache_nbytes_by_kind`` of the returned cache with ``estimate_kv_cache_bytes_by_kind`` (key/value, conv and
recurrent state of linear-attention layers, ...). Prints one line per architecture:

  MATCH      every scenario agrees to the byte, kind by kind ([storage != visible: ...] names the scenarios where the held
             storage differs from numel * element_size)
  MISMATCH   at least one differs (details follow)
  NOTIMPL    the estimator refuses on purpose (NotImplementedError with its reason)
  BUILD      the tiny model could not be built or run (reason)

Usage: PYTHONPATH=src python tools/kv_survey.py [model_type ...] [-v]   (a few minutes on 2 CPU cores)
"""

from __future__ import annotations

import sys
import time
import traceback
import warnings

import torch
import transformers
from transformers import AutoModelForCausalLM, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from kvbench.estimate.kvcache import (
    estimate_kv_cache_bytes,
    estimate_kv_cache_bytes_by_kind,
)
from kvbench.compat import cache_from_output
from kvbench.measuring.instruments.cache_bytes import (
    cache_nbytes,
    cache_nbytes_by_kind,
    cache_visible_nbytes,
)

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()

# Tiny sizes, applied where the config has the field. head_dim 24 != hidden/heads and 2 KV heads != 4 heads make a
# wrong guess visible; the later tiers drop the overrides some architectures reject.
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=256, num_experts=4, num_local_experts=4, n_routed_experts=4, moe_num_experts=4,
            num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=32, shared_expert_intermediate_size=32,
            kv_lora_rank=32, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, n_group=1,
            topk_group=1, sliding_window=8, attention_chunk_size=8, bos_token_id=1, eos_token_id=2, pad_token_id=0,
            max_window_layers=1, first_k_dense_replace=1, ffn_hidden_size=128, encoder_layers=2, decoder_layers=2,
            encoder_attention_heads=4, decoder_attention_heads=4, d_model=64, rotary_dim=8, window_size=8,
            num_decoder_layers=2, num_encoder_layers=2, mamba_d_state=16, mamba_n_heads=8, mamba_d_head=16,
            state_size=16, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
            linear_value_head_dim=16, is_decoder=True, expert_ffn_hidden_size=32, zero_expert_num=2, moe_topk=2)
TIERS = [dict(head_dim=24), dict(head_dim=16), {}]
PER_MODEL = {  # extra overrides some architectures need to build small
    "gpt_neo": dict(attention_types=[[["global", "local"], 1]]),
    "gemma3n_text": dict(num_hidden_layers=4, layer_types=["sliding_attention", "full_attention"] * 2,
                         num_kv_shared_layers=2, hidden_size_per_layer_input=16, laurel_rank=8,
                         activation_sparsity_pattern=[0.0] * 4, altup_num_inputs=2),
    "prophetnet": dict(num_hidden_layers=None),
    "gemma4_text": dict(num_hidden_layers=4, layer_types=["sliding_attention", "full_attention"] * 2,
                        num_kv_shared_layers=2, global_head_dim=32, num_global_key_value_heads=1,
                        hidden_size_per_layer_input=16, vocab_size_per_layer_input=256, attention_k_eq_v=True),
}
PER_MODEL["dbrx"] = dict(attn_config=dict(kv_n_heads=2, rope_theta=10000.0, clip_qkv=8.0),
                         ffn_config=dict(ffn_hidden_size=64, moe_num_experts=2, moe_top_k=1))
PER_MODEL["longcat_flash"] = PER_MODEL["axk2"] = dict(head_dim=8)  # head_dim is the rotary part of MLA keys
PER_MODEL["gemma4"] = PER_MODEL["gemma4_unified_text"] = PER_MODEL["gemma4_text"]
OPTIONAL_NONE = ("sliding_window", "attention_chunk_size", "q_lora_rank", "rotary_dim")
# (name, batch, prompt, new tokens, generate kwargs, dtype)
SCENARIOS = [
    ("greedy-B2-long", 2, 12, 3, {}, torch.float32),
    ("greedy-B1-short", 1, 4, 2, {}, torch.float32),
    ("prefill-only", 1, 12, 1, {}, torch.float32),
    ("sample-B1", 1, 12, 3, dict(do_sample=True), torch.float32),
    ("beam2", 1, 12, 3, dict(num_beams=2), torch.float32),
    ("static-long", 1, 12, 3, dict(cache_implementation="static"), torch.float32),
    ("static-short", 2, 4, 2, dict(cache_implementation="static"), torch.float32),
    ("bf16", 2, 12, 3, {}, torch.bfloat16),
]


def _shrink_kwargs(cls, default, extra, per_model):
    amap = getattr(cls, "attribute_map", {}) or {}
    kw = {}
    for name, value in {**TINY, **extra}.items():
        real = amap.get(name, name)
        try:
            current = getattr(default, name)
        except AttributeError:
            current = "absent"
        except Exception:  # noqa: BLE001 - per-layer attribute of a heterogeneous config: it is a field
            current = None
        if (current == "absent" and name not in per_model) or isinstance(getattr(cls, real, None), property):
            continue
        if name in OPTIONAL_NONE and current is None:
            continue
        kw[real] = value
    try:
        mla = getattr(default, "kv_lora_rank", None)
    except Exception:  # noqa: BLE001 - heterogeneous config
        mla = True
    if mla and "num_key_value_heads" in kw:  # MLA: static caches need kv = heads
        kw["num_key_value_heads"] = TINY["num_attention_heads"]
    spare = 250  # other special tokens: in the vocabulary, away from the prompt ids (3..99)
    for name, value in vars(default).items():
        if (name.endswith("_token_id") or name.endswith("_token_index")) and isinstance(value, int):
            if name not in ("bos_token_id", "eos_token_id", "pad_token_id"):
                kw[name], spare = spare, spare - 1
    layer_types = getattr(default, "layer_types", None)
    settable = not isinstance(getattr(cls, amap.get("layer_types", "layer_types"), None), property)
    if isinstance(layer_types, (list, tuple)) and layer_types and settable:
        kinds = list(dict.fromkeys(layer_types))  # every kind once, at least 2 layers
        n = max(2, len(kinds))
        kw[amap.get("num_hidden_layers", "num_hidden_layers")] = n
        kw["layer_types"] = (kinds * n)[:n]
    kw.update({k: v for k, v in extra.items() if k in ("layer_types", "num_hidden_layers")})
    return {k: v for k, v in kw.items() if v is not None}


def tiny_config(model_type: str, extra: dict) -> PretrainedConfig:
    cls = CONFIG_MAPPING[model_type]
    default = cls()
    kw = _shrink_kwargs(cls, default, extra, PER_MODEL.get(model_type, {}))
    for sub_name in getattr(cls, "sub_configs", {}) or {}:
        sub = getattr(default, sub_name, None)
        if isinstance(sub, PretrainedConfig) and hasattr(sub, "hidden_size"):
            kw[sub_name] = type(sub)(**_shrink_kwargs(type(sub), sub, extra, {}))
    return cls(**kw)


def _generate(model, batch, prompt, new, gen_kwargs):
    for attr in ("_previous_max_cache_length", "_cache"):  # a static cache sticks to the model: start afresh
        if attr in vars(model):
            delattr(model, attr)
    ids = torch.randint(3, 100, (batch, prompt))
    torch.manual_seed(0)
    kwargs = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, return_dict_in_generate=True,
                  use_cache=True)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), **{**kwargs, **gen_kwargs})
    return out


def build(model_type: str):
    """A tiny model that generates, trying the tiers of overrides in turn; returns (config, model, error)."""
    error = None
    for tier in TIERS:
        try:
            torch.manual_seed(0)
            config = tiny_config(model_type, {**tier, **PER_MODEL.get(model_type, {})})
            with torch.device("meta"):
                n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
            if n_params > 30e6:
                raise RuntimeError(f"tiny model still has {n_params / 1e6:.0f}M parameters")
            model = AutoModelForCausalLM.from_config(config).eval()
            if hasattr(model, "set_default_language"):  # X-MOD
                model.set_default_language("en_XX")
            _generate(model, 1, 4, 2, {})
            return config, model, None
        except Exception as exc:  # noqa: BLE001 - a survey reports every failure and goes on
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    return None, None, error


def survey(model_type: str, verbose: bool = False) -> tuple[str, str]:
    try:  # the estimator needs only the config: ask it first
        estimate_kv_cache_bytes(tiny_config(model_type, PER_MODEL.get(model_type, {})), batch_size=1, prompt_len=4,
                                new_tokens=2, dtype=torch.float32)
    except NotImplementedError as exc:
        return "NOTIMPL", str(exc)
    except Exception:  # noqa: BLE001 - the config itself may not build: `build` tells
        pass
    config, model, error = build(model_type)
    if model is None:
        return "BUILD", error
    try:
        estimate_kv_cache_bytes(config, batch_size=1, prompt_len=4, new_tokens=2, dtype=torch.float32)
    except NotImplementedError as exc:
        return "NOTIMPL", str(exc)
    except Exception as exc:  # noqa: BLE001 - an estimator bug: report it
        return "ESTIMATE", f"{type(exc).__name__}: {str(exc)[:200]}"
    problems, views, ran = [], [], 0
    for name, batch, prompt, new, gen_kwargs, dtype in SCENARIOS:
        try:
            out = _generate(model.to(dtype), batch, prompt, new, gen_kwargs)
        except Exception as exc:  # noqa: BLE001
            if verbose:
                traceback.print_exc()
            problems.append(f"{name}: generate failed ({type(exc).__name__}: {str(exc)[:80]})")
            continue
        finally:
            model.to(torch.float32)
        ran += 1
        measured = cache_nbytes_by_kind(cache_from_output(out))
        if cache_visible_nbytes(cache_from_output(out)) != cache_nbytes(cache_from_output(out)):
            views.append(name)
        try:
            estimated = estimate_kv_cache_bytes_by_kind(
                config, batch_size=batch, prompt_len=prompt, new_tokens=new, dtype=dtype,
                num_beams=gen_kwargs.get("num_beams", 1),
                cache_implementation=gen_kwargs.get("cache_implementation", "dynamic"))
        except NotImplementedError as exc:
            problems.append(f"{name}: refused ({exc})")
            continue
        length_ok = out.sequences.shape[-1] == prompt + new
        if measured != estimated or not length_ok:
            problems.append(f"{name}: measured {measured} estimated {estimated} length {out.sequences.shape[-1]}")
    mismatches = [p for p in problems if "measured" in p]
    if mismatches:
        return "MISMATCH", "; ".join(problems)
    detail = f"{ran}/{len(SCENARIOS)} scenarios" + (f" ({'; '.join(problems)})" if problems else "")
    return "MATCH", detail + (f" [storage != visible: {' '.join(views)}]" if views else "")


def main(argv: list[str]) -> None:
    verbose = "-v" in argv
    names = [a for a in argv if not a.startswith("-")] or sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    counts: dict[str, list[str]] = {}
    for model_type in names:
        start = time.perf_counter()
        status, detail = survey(model_type, verbose)
        counts.setdefault(status, []).append(model_type)
        print(f"{status:9s} {model_type:28s} {time.perf_counter() - start:5.1f}s  {detail}", flush=True)
    for status, members in counts.items():
        print(f"\n{status} ({len(members)}): {' '.join(members)}")


if __name__ == "__main__":
    main(sys.argv[1:])
