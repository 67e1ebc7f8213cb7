"""The model-family seam: the family comes from the model's own config, and a model of none fails in one line
before any weights load."""

import json

import pytest
import torch

from fashioncap.cli import main
from fashioncap.decoding import encode_images
from fashioncap.errors import ConfigError
from fashioncap.models import (
    FAMILIES,
    build_tiny_model,
    family_of,
    family_of_source,
    load_model_and_processor,
)
from fashioncap.models.source import ModelLoadError


def foreign_model_dir(path, model_type="llava"):
    """A model dir of an architecture no family serves; its weights file is garbage, so loading it would fail
    otherwise than with the family error."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": model_type}))
    (path / "model.safetensors").write_bytes(b"not weights")
    return path


def test_the_family_is_read_from_the_model_config(tiny_model_dir):
    model, processor = load_model_and_processor(str(tiny_model_dir))
    assert family_of(model).NAME == family_of_source(str(tiny_model_dir)).NAME == "blip"
    assert type(model).__name__ in family_of(model).CARD_CLASSES


def test_a_model_of_no_family_is_one_line_naming_the_families_before_loading(tmp_path):
    path = foreign_model_dir(tmp_path / "llava")
    with pytest.raises(ModelLoadError) as error:
        load_model_and_processor(str(path))
    message = str(error.value)
    assert "'llava' model, of no model family fashioncap has (families: " in message and "\n" not in message
    assert all(name in message for name in FAMILIES)


def test_an_adapter_takes_its_base_models_family(tmp_path):
    base = foreign_model_dir(tmp_path / "base", "git")
    run = tmp_path / "run"
    run.mkdir()
    (run / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    with pytest.raises(ModelLoadError, match="'git' model, of no model family"):
        family_of_source(str(run))


def test_caption_stops_in_one_line_on_a_model_of_no_family(tmp_path, capsys):
    path = foreign_model_dir(tmp_path / "llava")
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    assert main(["caption", "--model-dir", str(path), str(image)]) != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert "of no model family fashioncap has" in lines[-1]


def test_a_florence2_checkpoint_in_the_remote_code_format_is_one_line_naming_the_native_ones(
    tmp_path, capsys
):
    """microsoft/Florence-2-*'s format (model_type florence2, its own `davit` / `florence2_language` sub-configs)
    is Florence-2's family by its model_type, but only its own code loads it: refused before any weights load,
    naming the native conversions, not transformers' list of every model type it knows."""
    path = foreign_model_dir(tmp_path / "Florence-2-base", "florence2")
    config = {"model_type": "florence2", "auto_map": {"AutoConfig": "configuration_florence2.Florence2Config"},
              "vision_config": {"model_type": "davit"}, "text_config": {"model_type": "florence2_language"}}  # fmt: skip
    (path / "config.json").write_text(json.dumps(config))
    assert family_of_source(str(path)).NAME == "florence2"
    assert main(["caption", "--model-dir", str(path), str(path / "config.json")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "remote-code format" in line and "florence-community/Florence-2-base" in line


def test_florence2s_caption_prompt_is_the_recipes_and_the_run_keeps_it(tmp_path):
    from fashioncap.models import load_for_inference, set_caption_prompt
    from fashioncap.models.florence2 import CAPTION_PROMPT

    model, processor = build_tiny_model(["red", "dress"], family_name="florence2")
    model.eval()
    pixel_values = torch.randn(2, 3, 64, 64)
    default = encode_images(model, pixel_values)
    set_caption_prompt(model, processor, "<DETAILED_CAPTION>")
    detailed_ids = model.caption_prompt_ids
    assert not torch.equal(encode_images(model, pixel_values), default)

    run = tmp_path / "run"
    model.save_pretrained(run)
    processor.save_pretrained(run)
    loaded, _ = load_for_inference(str(run))
    assert len(loaded.caption_prompt_ids) != len(detailed_ids), "without a recipe: the family's default"
    set_caption_prompt(loaded, processor, CAPTION_PROMPT)
    assert torch.equal(encode_images(loaded.eval(), pixel_values), default)
    (run / "fashioncap_config.json").write_text(
        json.dumps({"model": {"caption_prompt": "<DETAILED_CAPTION>"}})
    )
    loaded, _ = load_for_inference(str(run))
    assert torch.equal(loaded.caption_prompt_ids, detailed_ids)


def test_a_caption_prompt_for_blip_is_one_line(tiny_model_dir):
    with pytest.raises(ConfigError, match="a BLIP model takes no prompt, only the image"):
        load_model_and_processor(str(tiny_model_dir), caption_prompt="<CAPTION>")


def test_florence2s_vision_preset_counts_davit_blocks_across_stages():
    """Florence-2-base's tower (1 + 1 + 9 + 1 blocks, built on the meta device): the last 6 blocks are blocks
    4-8 of stage 2 and stage 3's one; the decoder preset leaves the tower alone."""
    import re

    from transformers import Florence2Config, Florence2ForConditionalGeneration

    from fashioncap.models import lora_targets

    with torch.device("meta"):
        model = Florence2ForConditionalGeneration(Florence2Config(text_config={"model_type": "bart"}))
    names = [name for name, _ in model.named_modules()]

    def blocks(preset, count=6):
        pattern = lora_targets(model, preset, count)
        return sorted(
            {
                n.split(".")[3] + "." + n.split(".")[4]
                for n in names
                if re.fullmatch(pattern, n) and "vision" in n
            }
        )

    assert blocks("decoder+vision") == ["2.4", "2.5", "2.6", "2.7", "2.8", "3.0"]
    assert blocks("decoder") == []
    decoder = [n for n in names if re.fullmatch(lora_targets(model, "decoder", 6), n)]
    per_layer = 4 + 4 + 2  # q, k, v, out of self- and cross-attention; fc1, fc2
    assert len(decoder) == per_layer * model.config.text_config.decoder_layers
    with pytest.raises(ValueError, match="vision_lora_layers=13 but the vision encoder has 12 layers"):
        lora_targets(model, "decoder+vision", 13)
