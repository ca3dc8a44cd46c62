"""A trial's note written without reading the study reads back through optuna-dashboard."""

from __future__ import annotations

import optuna
from optuna_dashboard import get_note, save_note

from search.notes import save_trial_note
from storage import open_storage


def test_a_long_note_reads_back_whole_and_a_later_edit_replaces_it(tmp_path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'notes.db'}", heartbeat_interval=None)
    study = optuna.create_study(study_name="notes", storage=storage)
    first, second = study.ask(), study.ask()
    body = "## Trial 0\n" + "| 1 | 0.5 |\n" * 400  # ~5 kB: three chunks of 2,045 characters
    save_trial_note(first, body)
    save_trial_note(second, "short")
    assert get_note(first) == body
    assert get_note(second) == "short"  # notes of two trials do not mix
    attrs = storage.get_study_system_attrs(study._study_id)
    assert attrs[f"dashboard:{first._trial_id}:note_ver"] == 1
    save_note(first, "edited in the dashboard")  # the dashboard's own path: version 2
    assert get_note(first) == "edited in the dashboard"
    assert get_note(second) == "short"
