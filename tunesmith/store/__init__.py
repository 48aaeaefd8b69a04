"""The store: what tunesmith keeps beyond folders on disk, shared by every server and worker.

    schema.py      the tables (SQLAlchemy 2): uploaded files, fine-tuning jobs with their events and
                   checkpoints; the model registry, feedback and A/B tests join them by migration
    db.py          Store: an engine for a URL (an SQLite file by default, PostgreSQL to share it
                   between machines), sessions, and migration to the newest schema on open
    migrations/    Alembic: every schema change is a migration, so an older store opens in a newer tunesmith

Folders stay the contract for models and datasets (artifacts.py); rows hold what many processes
read and write at once: who owns what, job state, events.
"""
