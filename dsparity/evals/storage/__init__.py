"""The results store (SQLAlchemy: SQLite, PostgreSQL) and its write path."""
