"""The shipped radiology CLIP tokenizer: loads offline, round-trips text, matches CLIP's conventions."""

from __future__ import annotations

from pathlib import Path

from medsd.tokenizer import BOS, EOS, MAX_LENGTH, load_clip_tokenizer, save_tokenizer, train_bpe


def test_round_trip_and_clip_conventions() -> None:
    tok = load_clip_tokenizer()
    text = "A chest X-ray with Cardiomegaly and Pleural Effusion"
    ids = tok(text, padding="max_length", truncation=True).input_ids
    assert len(ids) == MAX_LENGTH == tok.model_max_length
    assert ids[0] == tok.convert_tokens_to_ids(BOS) and tok.eos_token_id == tok.convert_tokens_to_ids(EOS)
    assert tok.pad_token_id == tok.eos_token_id
    # Radiology words are single tokens in this vocabulary, as in a domain tokenizer.
    words = tok.convert_ids_to_tokens(tok(text).input_ids[1:-1])
    assert {"cardiomegaly</w>", "pleural</w>", "effusion</w>", "chest</w>"} <= set(words)
    assert tok.decode(ids, skip_special_tokens=True).replace(" - ", "-") == text.lower()


def test_truncation_and_added_tokens() -> None:
    tok = load_clip_tokenizer()
    long_ids = tok(" ".join(["opacity"] * 200), truncation=True).input_ids
    assert len(long_ids) == MAX_LENGTH and long_ids[-1] == tok.eos_token_id
    before = len(tok)
    tok.add_tokens(["<cardiomegaly>"])
    assert tok("<cardiomegaly>").input_ids[1] == before


def test_save_writes_legacy_files_and_reloads(tmp_path: Path) -> None:
    tok = load_clip_tokenizer()
    save_tokenizer(tok, tmp_path)
    assert (tmp_path / "merges.txt").read_text().startswith("#version: 0.2\n")
    again = load_clip_tokenizer(tmp_path)
    text = "no acute cardiopulmonary process"
    assert again(text).input_ids == tok(text).input_ids


def test_training_builds_a_working_vocabulary(tmp_path: Path) -> None:
    corpus = ["a chest x-ray with cardiomegaly", "small left pleural effusion", "no pneumothorax"] * 50
    train_bpe(corpus, vocab_size=320, out_dir=tmp_path)
    tok = load_clip_tokenizer(tmp_path)
    assert 258 < len(tok) <= 320
    assert "cardiomegaly</w>" in tok.get_vocab()
