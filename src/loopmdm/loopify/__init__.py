"""Retrofitting loops onto trained models: ``loopify(source, "A:B", out)`` (``loopmdm loopify``) turns a trained
MDM or masked LM into a library run folder whose layers [A, B) are the looped mid block, exact at S = 1; then
``loopmdm train --init OUT`` fine-tunes it with random S (optionally with a curriculum over S).

Sources (``sources``): a library run of a plain MDM, a transformers folder or Hub id of the families BERT,
RoBERTa, ModernBERT and Dream. The conversion (``convert``) renames the library's block keys, or wraps the
transformers model's own modules (``loopmdm.backbones``).

Place in the layers of the package: beside train / sampling / eval (it imports ``backbones``, ``checkpoint``,
``config``, ``data``); the command line and ``experiments.loopify`` import it.
"""

from .convert import check_exact, loopify
from .ranges import check_loop_range, parse_loop_layers
from .sources import Source, open_source

__all__ = [
    "loopify",
    "parse_loop_layers",
    "check_loop_range",
    "check_exact",
    "open_source",
    "Source",
]
