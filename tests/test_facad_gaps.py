"""`fashioncap data gaps`: what FACAD descriptions leave out, measured reproducibly (docs/data.md's figures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fashioncap.cli import main
from fashioncap.data.coco import DataError
from fashioncap.data.facad_gaps import measure_gaps, read_records

SLICE = Path(__file__).parent / "data" / "facad_records.jsonl"

RECORDS = [  # 4 blouses, 3 tees: a hand-countable sample
    {"title": "silk blouse", "description": "a soft silk blouse in navy with a striped collar"},
    {"title": "tie front blouse", "description": "this tie front top is perfect for the weekend"},
    {"title": "ruffle blouse", "description": "ruffles trim a breezy top with a v neckline"},
    {"title": "wrap blouse", "description": "a wrap silhouette with long sleeves"},
    {"title": "crew tee", "description": "a classic tee cut from cotton jersey"},
    {"title": "pocket tee", "description": "a relaxed tee with a chest pocket"},
    {"title": "logo tees", "description": "a printed blouse for everyday wear"},
    {"title": "cropped top", "description": "a cropped top"},
    {"title": "tank top", "description": "a ribbed tank top"},
    {"title": "knit top", "description": "a knit top"},
]


def test_measured_by_hand():
    gaps = measure_gaps(RECORDS)
    # product words (>= 3 titles): blouse, tee, top; named by 1 of 4 blouses, 2 of 3 tees ("tees" -> "tee"), 3 tops
    assert gaps["records"] == 10 and gaps["names_product_word"] == 0.6
    assert gaps["by_product"]["blouse"] == {"records": 4, "names_product_word": 0.25, "stand_ins": {"top": 2}}
    assert gaps["by_product"]["tee"]["stand_ins"] == {"blouse": 1}
    # 4 descriptions miss their product word; 3 say another product word ("top", never "tie": the title's own)
    assert gaps["misses_with_stand_in"] == 0.75 and gaps["stand_ins"] == {"top": 2, "blouse": 1}
    assert gaps["names_colour"] == 0.1  # navy
    assert gaps["names_pattern"] == 0.2  # striped, printed
    assert gaps["names_cut"] == 0.3  # v neckline, silhouette + sleeves, cropped
    assert gaps["non_visual"] == 0.3  # soft, perfect + weekend, everyday + wear
    assert gaps["words"] == {"mean": 6.4, "median": 6.5, "p10": 3, "p90": 10}


def test_the_repo_slice_through_the_command(capsys):
    assert main(["data", "gaps", str(SLICE), "--top", "5"]) == 0
    gaps = json.loads(capsys.readouterr().out)
    assert gaps["records"] == 400 and len(gaps["by_product"]) == 5
    assert gaps == measure_gaps(read_records(SLICE), top=5)
    # what docs/data.md reports for the 3,000-record sample holds roughly on this slice too
    assert 0.7 < gaps["names_product_word"] < 0.9 and gaps["names_colour"] < 0.15
    assert {"top", "blouse"} <= set(gaps["stand_ins"])
    assert 15 <= gaps["words"]["median"] <= 25


def test_a_bad_record_is_named(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"title": "a tee", "description": "a tee"}\n{"title": "a bag"}\nnot json\n')
    with pytest.raises(
        DataError, match=r"records.jsonl, record line 2, field 'description': missing or empty"
    ):
        read_records(path)
