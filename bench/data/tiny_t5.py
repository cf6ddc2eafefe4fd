"""A tiny randomly initialised T5 encoder with a word-level tokenizer trained on given captions: an offline
stand-in for flan-t5-xl / T5-XXL in tests and the CPU text-to-image demo (its features carry the caption's
words, not language understanding). Staged like a real one, as asset ``t5:<name>``."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch


def train_tokenizer(captions: Iterable[str], vocab_size: int = 4096):
    """A lower-cased word-level tokenizer (``tokenizers``) with T5's special tokens: <pad> = 0, </s> = 1,
    <unk> = 2, and </s> appended to every caption as the T5 tokenizer does."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(list(captions), trainers.WordLevelTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"]))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def make_tiny_t5(out_dir: str | Path, captions: Iterable[str], *, d_model: int = 32, layers: int = 2,
                 heads: int = 2, seed: int = 0) -> Path:
    """Write config.json, model.safetensors (encoder only) and tokenizer files to ``out_dir``."""
    from transformers import T5Config, T5EncoderModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(captions)
    cfg = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=d_model // heads, d_ff=2 * d_model,
                   num_layers=layers, num_heads=heads, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5EncoderModel(cfg).eval()
    model.save_pretrained(str(out), max_shard_size="1000GB")
    tokenizer.save_pretrained(str(out))
    return out / "model.safetensors"


def stage_tiny_t5(folder, name: str, captions: Iterable[str], **kw) -> dict:
    """Build the tiny encoder inside the asset folder and register it as ``t5:<name>``."""
    from bench.metrics.assets import t5_spec

    spec = t5_spec(name)
    make_tiny_t5((folder.root / spec.relpath).parent, captions, **kw)
    return folder.register_in_place(spec, source=f"tiny random T5 (bench.data.tiny_t5, {kw or 'defaults'})")
