"""fashioncap: fine-tune BLIP for fashion image captioning with LoRA and semantic rewards."""

__version__ = "0.1.0"
