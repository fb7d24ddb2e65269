"""The Hugging Face path on a tiny random GPT-2 saved to a temporary folder: loading without any
download, the adapter against the model's own logits, clear errors, one step of every regime."""

import sys

import polars as pl
import pytest
import torch

from llm_reference.config import PRESETS, HFModelConfig, HFRecipeConfig
from llm_reference.tokenizer import ALPHABET
from recsys_onpolicy.results import check_schema

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from llm_reference.hf import HFCausalLM, HFCodec, load_hf_model, require_transformers, run_hf_recipe


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A character-level tokenizer and a 2-layer random GPT-2, written by save_pretrained()."""
    path = tmp_path_factory.mktemp("tiny_gpt2")
    vocab = {"<pad>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(ALPHABET)}}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex("."), behavior="isolated")
    tk.decoder = tokenizers.decoders.Fuse()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>"
    )
    fast.save_pretrained(path)
    # transformers initialises with the global RNG; only this fixture relies on it
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=len(vocab),
        n_positions=32,
        n_embd=16,
        n_layer=2,
        n_head=2,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    transformers.GPT2LMHeadModel(cfg).save_pretrained(path)
    return path


def test_missing_folder_and_missing_config_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_hf_model(HFModelConfig(path=str(tmp_path / "nope")))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hf_model(HFModelConfig(path=str(tmp_path)))


def test_missing_transformers_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import now raises ImportError
    with pytest.raises(ImportError, match=r"recsys-onpolicy\[llm\]"):
        require_transformers()


def test_codec_round_trip_and_template(model_dir):
    _, codec = load_hf_model(HFModelConfig(path=str(model_dir), prompt_template="{prompt}"))
    assert (codec.eos_id, codec.pad_id) == (1, 0)
    ids = codec.encode("N3571=2:")
    assert len(ids) == 8 and codec.decode(ids + [codec.eos_id] + ids) == "N3571=2:"
    templated = HFCodec(codec.tokenizer, prompt_template="S{prompt}")
    assert templated.encode_prompt("12:") == codec.encode("S12:")


def test_templates_keep_other_braces_and_special_tokens_stay_in_answers(model_dir):
    _, codec = load_hf_model(HFModelConfig(path=str(model_dir)))
    braced = HFCodec(codec.tokenizer, prompt_template="{{x}}{prompt}")
    assert braced.encode_prompt("12:") == codec.encode("{{x}}12:")  # no KeyError, no format
    pad = codec.pad_id  # a special token inside an answer is not silently dropped
    assert codec.decode(codec.encode("4") + [pad] + codec.encode("6")) == "4<pad>6"


def test_prompts_start_with_bos_when_the_tokenizer_adds_one():
    """A Llama-style tokenizer puts BOS before every text: the model's prompts must have it too
    (answers never do); a tokenizer without it gets none."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, **{c: i + 3 for i, c in enumerate(ALPHABET)}}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex("."), behavior="isolated")
    tk.post_processor = tokenizers.processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", 2)])
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
    codec = HFCodec(fast)
    assert codec.encode_prompt("N357=1:") == fast("N357=1:")["input_ids"]
    assert codec.encode_prompt("N357=1:")[0] == 2 and 2 not in codec.encode("3+5-7")
    # a template that writes BOS itself gets it once
    assert HFCodec(fast, prompt_template="<bos>{prompt}").encode_prompt("N3:")[:2] == [
        2, fast.convert_tokens_to_ids("N")]
    tk.post_processor = None
    plain = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
    assert HFCodec(plain).encode_prompt("N357=1:") == plain("N357=1:")["input_ids"]
    assert HFCodec(plain).bos_id is None


def test_adapter_matches_the_model_and_ignores_left_padding(model_dir):
    module, codec = load_hf_model(HFModelConfig(path=str(model_dir)))
    module.eval()
    ids = torch.tensor([codec.encode("A12+3:")])
    want = module.model(input_ids=ids).logits
    mask = torch.ones_like(ids, dtype=torch.bool)
    pos = torch.arange(ids.shape[1])[None]
    torch.testing.assert_close(module(ids, mask, pos), want)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    pmask = torch.cat([torch.zeros(1, 3, dtype=torch.bool), mask], dim=1)
    ppos = torch.cat([torch.zeros(1, 3, dtype=torch.long), pos], dim=1)
    torch.testing.assert_close(module(padded, pmask, ppos)[:, 3:], want, atol=1e-5, rtol=1e-4)


def test_one_step_of_every_regime(model_dir):
    cfg = HFRecipeConfig(
        model={"path": str(model_dir)},
        seeds=[0],
        tasks={"n_eval": 4, "non_target": ["copying"]},
        regime={"steps": 1, "batch_prompts": 2, "group_size": 2, "n_train_prompts": 4, "rounds": 1},
        eval={"every": 0, "kl_prompts": 2, "kl_samples": 1},
        runtime={"verbose": False},
    )
    frame = run_hf_recipe(cfg)
    check_schema(frame)
    assert set(frame["experiment"]) == {"hf_recipe"}
    assert frame["regime"].unique(maintain_order=True).to_list() == list(PRESETS)
    last = frame.filter((pl.col("step") == 1) & (pl.col("metric") == "train/loss"))
    assert last.height == len(PRESETS) and last["value"].is_finite().all()
    assert isinstance(load_hf_model(cfg.model)[0], HFCausalLM)
