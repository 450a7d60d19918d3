"""The historian: every event stored (SQLite, or PostgreSQL by URL) and queryable
(``hostbus historian`` runs it, ``hostbus history`` and ``hostbus watch --since`` ask it)."""
