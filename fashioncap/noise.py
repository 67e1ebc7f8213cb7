"""Known-harmless warnings of the libraries underneath, hidden in fashioncap's own commands only.

Where a warning has a cause in fashioncap it is fixed there instead (`pin_memory` on a CPU and DDP's search for
unused parameters are set by `configs.load_config`). What is hidden here is named one by one with why it is
harmless; every other warning still shows. Importing fashioncap as a library hides nothing: only the command
entry points call `hide_known_harmless`, and `peft_without_alias_warning` is scoped to one call.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

# (logger, start of the message) -> why it is harmless
HARMLESS_LOG_RECORDS = {
    (
        "DeepSpeed",
        "Setting accelerator to CPU",
    ): "deepspeed logs it on import on every machine without a GPU, "
    "where fashioncap trains on the CPU as asked",
}


class DropHarmless(logging.Filter):
    """Drops a logger's records whose message starts with one of `prefixes`."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def hide_known_harmless() -> None:
    """Filter the records of HARMLESS_LOG_RECORDS, once per logger; call it before the libraries log them."""
    for name in {name for name, _ in HARMLESS_LOG_RECORDS}:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropHarmless) for f in logger.filters):
            prefixes = tuple(prefix for other, prefix in HARMLESS_LOG_RECORDS if other == name)
            logger.addFilter(DropHarmless(prefixes))


@contextlib.contextmanager
def peft_without_alias_warning():
    """peft 0.21 wraps a model by reading transformers' deprecated `is_gradient_checkpointing` alias, a
    FutureWarning on every run that we cannot act on; hidden around that call only."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield
