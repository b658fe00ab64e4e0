"""An offline CLIP BPE tokenizer with a radiology vocabulary, for the tiny models.

The real CLIP tokenizer cannot be downloaded here, so tiny models carry a byte-level BPE trained with the
`tokenizers` library on radiology text (Indiana/Open-i reports shipped inside torchxrayvision, plus CheXpert and
NIH finding names). `BpeTrainer` breaks ties between equally frequent pairs in a random order, so two trainings
give different vocabularies; the vocabulary the tiny models use is therefore trained once and shipped in
`medsd/assets/tokenizer/` (rebuild with `python -m medsd.tokenizer --out src/medsd/assets/tokenizer`).
"""

from __future__ import annotations

import argparse
import json
import re
import tarfile
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77
FINDING_NAMES = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices", "Infiltration", "Mass", "Nodule", "Emphysema", "Fibrosis", "Pleural Thickening", "Hernia",
]
TEMPLATES = [
    "a chest x-ray with {}", "a chest radiograph showing {}", "frontal chest x-ray, {}", "pa view with {}",
    "ap portable chest radiograph with {}", "no acute cardiopulmonary process", "a normal chest x-ray",
]


def shipped_tokenizer_dir() -> Path:
    """Folder of the shipped vocab.json + merges.txt."""
    return Path(str(resources.files("medsd") / "assets" / "tokenizer"))


def radiology_corpus() -> Iterator[str]:
    """Lower-cased radiology sentences: prompt templates with finding names, then Open-i report sections."""
    for template in TEMPLATES:
        for name in FINDING_NAMES:
            yield template.format(name.lower())
    yield from _openi_sections()


def _openi_sections() -> Iterator[str]:
    try:
        import torchxrayvision
    except ImportError:  # the tokenizer can still be trained on templates alone
        return
    archive = Path(torchxrayvision.__file__).parent / "data" / "NLMCXR_reports.tgz"
    if not archive.is_file():
        return
    pattern = re.compile(r'<AbstractText Label="(FINDINGS|IMPRESSION)">([^<]+)</AbstractText>')
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            handle = tar.extractfile(member) if member.isfile() else None
            if handle is not None:
                for _, text in pattern.findall(handle.read().decode("utf-8", "replace")):
                    yield text.lower()


def train_bpe(corpus: Iterable[str], vocab_size: int, out_dir: str | Path) -> Path:
    """Train a CLIP-style byte-level BPE (end-of-word suffix ``</w>``) and write vocab.json + merges.txt."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    # Train with the exact normalizer and pre-tokenizer CLIPTokenizer applies, so merges never span words
    # (a bare ByteLevel pre-tokenizer would learn "Ġword" tokens CLIP's tokenizer never produces).
    reference = CLIPTokenizer(vocab={BOS: 0, EOS: 1}, merges=[]).backend_tokenizer
    tok.normalizer = reference.normalizer
    tok.pre_tokenizer = reference.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[BOS, EOS],
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = json.loads(tok.to_str())["model"]
    (out_dir / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return out_dir


def load_clip_tokenizer(folder: str | Path | None = None) -> CLIPTokenizer:
    """Load vocab.json + merges.txt as a CLIPTokenizer padded/truncated to 77 tokens like SD's."""
    folder = Path(folder) if folder else shipped_tokenizer_dir()
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=MAX_LENGTH)


def save_tokenizer(tokenizer: CLIPTokenizer, folder: str | Path) -> None:
    """Save in the diffusers layout; also write vocab.json + merges.txt, which transformers 5 omits."""
    folder = Path(folder)
    tokenizer.save_pretrained(folder)
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the radiology BPE vocabulary shipped with medsd.")
    parser.add_argument("--out", default=str(shipped_tokenizer_dir()))
    parser.add_argument("--vocab-size", type=int, default=2048)
    args = parser.parse_args()
    print(train_bpe(radiology_corpus(), args.vocab_size, args.out))


if __name__ == "__main__":
    main()
