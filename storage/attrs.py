"""A trial's user attributes in one transaction.

``Trial.set_user_attr`` commits once per key. A finished trial carries a dozen attributes
(its best evaluation's metrics, timings, why it ended), and on PostgreSQL each commit is a
round trip: a dozen of them were a fifth of the worker's storage time per trial. Here the
trial is checked once (still RUNNING) and all keys go in one multi-row upsert into
Optuna's own table (its ORM model, the statement Optuna uses for one key), one commit.
Other databases get Optuna's per-key upsert inside the same transaction; storages that are
not an ``RDBStorage`` get one ``set_user_attr`` per key.
"""

from __future__ import annotations

import json
from typing import Any

import optuna
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from sqlalchemy.dialects import postgresql, sqlite

from storage.outage import wait_for_storage


def set_user_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """``trial.set_user_attr(k, v)`` for every item of ``attrs``, committed together."""
    if not attrs:
        return
    storage = trial.storage
    backend = getattr(storage, "_backend", storage)  # a study's RDBStorage sits in a cache
    if isinstance(backend, optuna.storages.RDBStorage):
        # An upsert per key: repeating the transaction after a lost answer is harmless.
        call = lambda: _write(backend, trial._trial_id, attrs)  # noqa: E731
        wait_for_storage(call, outage_seconds=getattr(backend, "outage_seconds", 0))
        trial._cached_frozen_trial.user_attrs.update(attrs)  # what set_user_attr also does
    else:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)


def _write(storage: optuna.storages.RDBStorage, trial_id: int, attrs: dict[str, Any]) -> None:
    with _create_scoped_session(storage.scoped_session, True) as session:
        trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
        storage.check_trial_is_updatable(trial_id, trial.state)
        dialect = UPSERTS.get(storage.engine.name)
        if dialect is None:  # Optuna's own upsert, one statement per key
            for key, value in attrs.items():
                storage._set_trial_attr_without_commit(
                    session, models.TrialUserAttributeModel, trial_id, key, value
                )
            return
        table = models.TrialUserAttributeModel
        rows = [
            {"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()
        ]
        insert = dialect(table).values(rows)
        session.execute(
            insert.on_conflict_do_update(
                index_elements=[table.trial_id, table.key],
                set_={"value_json": insert.excluded.value_json},
            )
        )


# One multi-row INSERT ... ON CONFLICT DO UPDATE, as Optuna upserts one key on these two.
UPSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}
