"""scripts/ship_models.py: a shipped run adds its row to the model card and keeps the card's text."""
from __future__ import annotations

from pathlib import Path

import pytest

from .script_module import load_script


def _ship_models():
    return load_script("ship_models")


CARD = """# Card
## Runs
| weights | steps |
|---|---|
| a.pt | 10 |

Stage 4, written by hand: kept.
"""


def test_run_rows_go_after_the_last_row_and_the_text_stays():
    card = _ship_models().add_run_rows(CARD, ["| b.pt | 20 |", "| c.pt | 30 |"])
    assert card == CARD.replace("| a.pt | 10 |\n", "| a.pt | 10 |\n| b.pt | 20 |\n| c.pt | 30 |\n")


def test_a_card_without_its_runs_table_is_refused():
    ship_models = _ship_models()
    with pytest.raises(ValueError, match="Runs"):
        ship_models.add_run_rows("# Card\nno table\n", ["| b.pt | 20 |"])
    with pytest.raises(ValueError, match="no table"):
        ship_models.add_run_rows("# Card\n## Runs\ntext only\n", ["| b.pt | 20 |"])


def test_the_shipped_card_has_its_runs_table():
    card = (Path(__file__).resolve().parents[1] / "src" / "pvsquant" / "data" / "models" / "MODEL_CARD.md").read_text()
    assert _ship_models().add_run_rows(card, ["| x.pt | 1 |"]).count("| x.pt | 1 |") == 1
