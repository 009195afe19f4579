"""``INSERT … ON CONFLICT (…) DO UPDATE`` in one statement on both SQLite and PostgreSQL.

Epoch rows and artefact rows are written again by resumed or redelivered attempts; the upsert makes
each write idempotent without a SELECT first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy.orm import Session


def upsert(session: Session, model: type[Any], values: Mapping[str, Any], conflict: Iterable[str],
           update: Iterable[str]) -> None:
    """Insert ``values`` into ``model``'s table; on a ``conflict`` with an existing row set its
    ``update`` columns to the new values (the dialect's own ``insert``: SQLite or PostgreSQL)."""
    from sqlalchemy.dialects import postgresql, sqlite

    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(model).values(**values)
    session.execute(stmt.on_conflict_do_update(index_elements=list(conflict),
                                               set_={k: stmt.excluded[k] for k in update}))


__all__ = ["upsert"]
