"""kvbench.measuring.engines.steps and `kvbench steps`: per-step probabilities are the softmax of the model's logits, greedy
picks the argmax, the cache bytes are the estimator's; text prompts through a small tokenizer built here."""

from __future__ import annotations

import json

import pytest
import torch

from kvbench.cli.app import main
from kvbench.estimate.kvcache import kv_cache_bytes_at
from kvbench.measuring.engines.reference import eos_ids, process_logits
from kvbench.inputs.decoding import Sampling
from kvbench.measuring.engines.steps import step_table

WORDS = "la capital de argentina es buenos aires y el asado del domingo se quemó".split()
SPECIALS = ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]  # ids 0, 1, 2, 3: the tiny llama's pad, bos and eos


def llama_config(**overrides):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=128, **overrides)


def word_tokenizer():
    """A word-level tokenizer of a few words (lower-cased, split on whitespace), nothing downloaded."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(SPECIALS + WORDS)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]",
                                   eos_token="[EOS]")


def tiny_model(vocab=len(SPECIALS + WORDS)):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(llama_config(vocab_size=vocab, pad_token_id=0)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # a peaked distribution: the ranking of candidates means something
    return model


@pytest.fixture
def model_folder(tmp_path):
    """A model folder as users have one: config.json and the tokenizer's files (random weights: no weight file)."""
    folder = tmp_path / "word-llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(llama_config(vocab_size=len(SPECIALS + WORDS)).to_dict()))
    word_tokenizer().save_pretrained(folder)
    return folder


def last_logits(model, ids):
    """The next-token logits of a whole-sequence forward, computed apart from the loop under test."""
    with torch.no_grad():
        return model(ids).logits[0, -1].float()


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "nocache"])
def test_probabilities_are_the_softmax_of_the_logits_and_greedy_takes_the_argmax(use_cache):
    model, tok = tiny_model(), word_tokenizer()
    ids = tok("La capital de Argentina es", return_tensors="pt").input_ids
    table = step_table(model, ids, new_tokens=6, top_k=4, use_cache=use_cache, tokenizer=tok)
    assert list(table["step"]) == [1, 2, 3, 4, 5, 6]
    sequence = ids
    for row in table.to_dict("records"):
        logits = last_logits(model, sequence)
        probs = torch.softmax(logits, dim=-1)
        scores = process_logits(logits[None], eos=eos_ids(model))[0]  # EOS out: exactly N tokens
        assert row["token_id"] == int(scores.argmax())
        if int(logits.argmax()) not in eos_ids(model):
            assert row["token_id"] == int(logits.argmax())
        assert row["prob"] == pytest.approx(float(probs[row["token_id"]]), abs=1e-6)
        top = torch.topk(probs, 4)
        assert row["top_ids"] == top.indices.tolist()
        assert row["top_probs"] == pytest.approx(top.values.tolist(), abs=1e-6)
        assert row["top_tokens"] == [tok.decode([i]) for i in row["top_ids"]]
        assert row["token"] == tok.decode([row["token_id"]]) and row["step_s"] > 0
        sequence = torch.cat([sequence, torch.tensor([[row["token_id"]]])], dim=-1)
    torch.manual_seed(0)
    greedy = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, min_new_tokens=6,
                            max_new_tokens=6)
    assert table["token_id"].tolist() == greedy[0, ids.shape[1]:].tolist()


def test_cache_bytes_and_positions_per_step():
    model = tiny_model(vocab=64)
    prompt_len, n = 5, 4
    ids = torch.randint(3, 64, (1, prompt_len), generator=torch.Generator().manual_seed(0))
    cached = step_table(model, ids, new_tokens=n)
    assert cached["positions"].tolist() == [prompt_len, 1, 1, 1]
    assert cached["kv_cache_bytes"].tolist() == [
        kv_cache_bytes_at(model.config, batch_size=1, seq_len=prompt_len + i, dtype=torch.float32,
                          last_step_tokens=prompt_len if i == 0 else 1) for i in range(n)]
    uncached = step_table(model, ids, new_tokens=n, use_cache=False)
    assert uncached["positions"].tolist() == [5, 6, 7, 8] and set(uncached["kv_cache_bytes"]) == {0}
    assert uncached["token"].isna().all()  # no tokenizer: ids only


def test_sampling_draws_from_the_processed_distribution():
    model, tok = tiny_model(), word_tokenizer()
    ids = tok("el asado del domingo", return_tensors="pt").input_ids
    table = step_table(model, ids, new_tokens=5, sampling=Sampling(0.7, top_k=3), seed=1)
    sequence = ids
    for row in table.to_dict("records"):
        logits = last_logits(model, sequence)
        scores = process_logits(logits[None], eos=eos_ids(model), do_sample=True, temperature=0.7, top_k=3)[0]
        assert row["draw_prob"] == pytest.approx(float(torch.softmax(scores, -1)[row["token_id"]]), abs=1e-6)
        assert row["token_id"] in torch.topk(scores, 3).indices.tolist()
        sequence = torch.cat([sequence, torch.tensor([[row["token_id"]]])], dim=-1)
    torch.manual_seed(1)
    sampled = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.7, top_k=3,
                             top_p=1.0, min_new_tokens=5, max_new_tokens=5)
    assert table["token_id"].tolist() == sampled[0, ids.shape[1]:].tolist()


def test_steps_command_on_a_model_folder_with_a_text_prompt(model_folder, capsys):
    argv = ["steps", "--model", str(model_folder), "--prompt", "La capital de Argentina es", "--new-tokens", "3",
            "--device", "cpu"]
    assert main(argv + ["--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["prompt_ids"] == word_tokenizer()("la capital de argentina es").input_ids
    assert [s["step"] for s in data["steps"]] == [1, 2, 3] and all(s["token"] for s in data["steps"])
    assert main(argv + ["--top-k", "2"]) == 0
    text = capsys.readouterr().out
    assert "top candidates" in text and "KV cache" in text and "'" in text
    assert main(argv + ["--format", "csv", "--no-cache"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("step,positions,token_id,token,prob") and len(lines) == 4


def test_tokenizer_option_gives_a_preset_text(tmp_path, capsys):
    word_tokenizer().save_pretrained(tmp_path / "tok")
    assert main(["steps", "--model", "tiny", "--tokenizer", str(tmp_path / "tok"), "--prompt", "buenos aires",
                 "--new-tokens", "2", "--device", "cpu", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["prompt_ids"] == [9, 10]


def test_a_preset_gives_the_same_steps_every_call(capsys):
    argv = ["steps", "--model", "tiny", "--prompt-len", "6", "--new-tokens", "3", "--device", "cpu", "--format",
            "json", "--seed", "4"]
    runs = []
    for _ in range(2):
        assert main(argv) == 0
        runs.append([s["token_id"] for s in json.loads(capsys.readouterr().out)["steps"]])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("args, named", [
    (["--prompt", "hola"], "--tokenizer"),
    (["--prompt", "hola", "--prompt-len", "4"], "--prompt-len"),
    ([], "--prompt-len"),
    (["--prompt-len", "4", "--decoding", "beam"], "beam"),
    (["--prompt-len", "4", "--format", "xml"], "xml"),
    (["--prompt-len", "4", "--temperature", "0"], "temperature"),
    (["--prompt-len", "4", "--new-tokens", "0"], "--new-tokens"),
    (["--prompt-len", "4000"], "context"),
    (["--prompt-len", "4", "--warmup", "-1"], "--warmup"),
])
def test_steps_refuses_bad_input_in_one_line(args, named, capsys):
    assert main(["steps", "--model", "tiny", "--device", "cpu"] + args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kvbench: error:") and named in err
