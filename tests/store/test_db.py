"""The store opens on SQLite and on the machine's PostgreSQL, migrated to the schema the code declares."""

from __future__ import annotations

import threading

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text

from tests.conftest import PG_URL
from tunesmith.store.db import VERSION_TABLE, Store, head_revision
from tunesmith.store.schema import Base, Job, JobEvent

HEAD = head_revision()


def test_a_new_store_is_migrated_to_the_declared_schema(store_url: str) -> None:
    store = Store(store_url)
    assert store.revision() == HEAD
    assert {"files", "jobs", "job_events", "job_checkpoints"} <= set(inspect(store.engine).get_table_names())
    with store.engine.connect() as connection:  # the migrations build exactly what schema.py declares
        context = MigrationContext.configure(connection, opts={
            "compare_type": True, "include_name": lambda name, kind, _: not (kind == "table" and name == VERSION_TABLE)})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []
    store.close()


def test_stores_opened_together_migrate_once(store_url: str) -> None:
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            Store(store_url).close()
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert Store(store_url).revision() == HEAD


def test_rows_round_trip_and_events_go_with_their_job(store_url: str) -> None:
    store = Store(store_url)
    with store.session() as s:
        job = Job(id="ftjob-1", owner="", created_at=1, created=1.0, model="m", training_file="file-1", seed=3, status="queued",
                  method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": "auto"}}},
                  job_metadata={"team": "a"})
        job.events.append(JobEvent(id="ftevent-1", created_at=1, level="info", type="message", message="hi"))
        job.events.append(JobEvent(id="ftevent-2", created_at=2, level="info", type="metrics", message="m",
                                   data={"step": 1, "train_loss": 0.5}))
        s.add(job)
    with store.session() as s:
        job = s.get(Job, "ftjob-1")
        assert job.job_metadata == {"team": "a"} and job.method["supervised"]["hyperparameters"]["n_epochs"] == "auto"
        assert [e.id for e in job.events] == ["ftevent-1", "ftevent-2"] and job.events[1].data["train_loss"] == 0.5
        s.delete(job)
    with store.session() as s:
        assert s.scalars(select(JobEvent)).all() == []
    store.close()


def test_json_with_nan_or_infinity_is_kept_as_null_on_both_stores(store_url: str) -> None:
    # PostgreSQL's JSONB has no NaN: a job's metrics event with a NaN training loss failed its whole statement there
    # (psycopg DataError), while SQLite stored the NaN; both now keep null.
    store = Store(store_url)
    with store.session() as s:
        job = Job(id="ftjob-1", owner="", created_at=1, created=1.0, model="m", training_file="file-1", seed=3,
                  status="running", method={"lr": float("inf")})
        job.events.append(JobEvent(id="ftevent-1", created_at=1, level="info", type="metrics", message="m",
                                   data={"step": 5, "train_loss": float("nan"), "history": [1.5, float("-inf")]}))
        s.add(job)
    with store.session() as s:
        job = s.get(Job, "ftjob-1")
        assert job.method == {"lr": None}
        assert job.events[0].data == {"step": 5, "train_loss": None, "history": [1.5, None]}
    store.close()


def test_a_store_made_by_an_older_tunesmith_opens_in_this_one(store_url: str) -> None:
    """The first store (files and jobs only, migration 0001) with a job in it: opening it migrates to the
    newest schema and keeps the job."""
    old = Store(store_url, migrate=False)
    old.migrate("0001")
    assert old.revision() == "0001" and "model_versions" not in inspect(old.engine).get_table_names()
    with old.session() as s:
        s.add(Job(id="ftjob-old", owner="", created_at=1, created=1.0, model="m", training_file="file-1", seed=3,
                  status="succeeded", method={"type": "supervised", "supervised": {"hyperparameters": {}}}, result_files=[]))
    old.close()
    new = Store(store_url)
    assert new.revision() == HEAD != "0001"
    assert "model_versions" in inspect(new.engine).get_table_names()
    with new.session() as s:
        assert s.get(Job, "ftjob-old").status == "succeeded"
    new.close()


def test_an_upgrade_that_copies_a_table_keeps_the_rows_referring_to_it(store_url: str) -> None:
    # Migration 0007 copies annotation_items (SQLite drops a column that way); with foreign keys on, dropping the old
    # copy cascaded to every annotation: an upgraded SQLite store had lost all its labels.
    old = Store(store_url, migrate=False)
    old.migrate("0006")
    with old.engine.begin() as c:
        c.execute(text("INSERT INTO annotation_tasks (name, labels, instructions, overlap, created) "
                       "VALUES ('t', '[\"a\", \"b\"]', '', 1, 1.0)"))
        for i in range(3):
            c.execute(text("INSERT INTO annotation_items (task, item_id, text, text_hash, meta, created) "
                           "VALUES ('t', :i, 'hello', 'h', '{}', 1.0)"), {"i": str(i)})
        for (seq,) in c.execute(text("SELECT seq FROM annotation_items")).all():
            c.execute(text("INSERT INTO annotations (task, item_seq, annotator, label, origin, created) "
                           "VALUES ('t', :q, 'ann', 'a', 'web', 1.0)"), {"q": seq})
    old.close()
    new = Store(store_url)
    with new.engine.connect() as c:
        assert [c.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in ("annotation_items", "annotations")] == [3, 3]
        if new.dialect == "sqlite":  # and the store still enforces its foreign keys
            assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    new.close()


def test_logged_predictions_keep_their_rows_when_the_answer_shape_column_arrives(store_url: str) -> None:
    """Migration 0008 adds predictions.answer_shape (what feedback is checked against without logged content): the
    rows logged before it stay, with no shape, and feedback on them is still taken."""
    from tunesmith.monitor.feedback import FeedbackCreated, FeedbackRequest, FeedbackService
    from tunesmith.store.schema import Prediction

    old = Store(store_url, migrate=False)
    old.migrate("0007")
    with old.engine.begin() as c:
        c.execute(text("INSERT INTO predictions (request_id, model, model_version, kind, created, inputs, outputs, "
                       "latency_ms) VALUES ('req-1', 'reviews', 'reviews-v1', 'predict', 1.0, 'null', 'null', 3.0)"))
    old.close()
    new = Store(store_url)
    assert new.revision() == HEAD
    with new.session() as s:
        row = s.get(Prediction, "req-1")
        assert row.model == "reviews" and row.answer_shape is None
    assert isinstance(FeedbackService(new).submit(FeedbackRequest(request_id="req-1", rating="up")), FeedbackCreated)
    new.close()


def test_optuna_studies_share_the_database_and_older_stores_hand_over_alembic_version(store_url: str) -> None:
    """Optuna keeps its schema version in Alembic's default table; the store keeps its own elsewhere, and a
    store made before that moves its revision over when opened."""
    import optuna
    from sqlalchemy import text

    old = Store(store_url, migrate=False)
    old.migrate("0002")
    with old.engine.begin() as c:  # what tunesmith 0.x left: its revision in alembic_version
        c.execute(text(f"ALTER TABLE {VERSION_TABLE} RENAME TO alembic_version"))
    old.close()
    store = Store(store_url)
    assert store.revision() == HEAD
    assert "alembic_version" not in inspect(store.engine).get_table_names()
    storage = optuna.storages.RDBStorage(store.url)
    study = optuna.create_study(study_name="s", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    storage.remove_session()
    again = Store(store_url)  # Optuna's alembic_version does not confuse the store, nor the store Optuna's
    assert again.revision() == HEAD
    assert len(optuna.load_study(study_name="s", storage=store.url).trials) == 2
    store.close()
    again.close()


def test_times_past_2038_are_kept(store_url: str) -> None:
    """Unix seconds past 2**31 (January 2038): PostgreSQL's INTEGER refused them ("integer out of range")."""
    import time

    store = Store(store_url)
    later = 2**31 + 86_400 * 365  # 2039
    with store.session() as s:
        s.add(Job(id="ftjob-future", owner="", created_at=later, created=time.time(), model="m", training_file="file-x",
                  seed=1, method={"type": "supervised", "supervised": {"hyperparameters": {}}}, result_files=[],
                  status="queued", finished_at=later + 1, estimated_finish=later + 2))
        s.add(JobEvent(id="ftevent-future", job_id="ftjob-future", created_at=later, level="info", type="message",
                       message="from the future"))
    with store.session() as s:
        job = s.get(Job, "ftjob-future")
        assert (job.created_at, job.finished_at, job.estimated_finish) == (later, later + 1, later + 2)
        assert job.events[0].created_at == later
    store.close()


def test_a_store_password_is_never_printed_nor_put_on_a_command_line(monkeypatch) -> None:
    # `tunesmith worker` printed it, `serve --workers` passed it to each worker as --db (so `ps` showed it), and a
    # URL that did not parse was echoed whole.
    import pytest

    from tunesmith.config import JobsSpec
    from tunesmith.errors import ConfigError
    from tunesmith.serve import server
    from tunesmith.store.db import shown_url

    assert shown_url("postgresql://bob:Secr3t@db.example:5432/ts") == "postgresql://bob:***@db.example:5432/ts"
    assert "Secr3t" not in shown_url("postgresql://bob:Secr3t@127.0.0.1:54x2/test")
    # libpq also takes the password in the query: the server and worker logs printed it
    shown = shown_url("postgresql://bob@db.example/ts?sslmode=require&password=Secr3t")
    assert "Secr3t" not in shown and "password=***" in shown and "sslmode=require" in shown
    with pytest.raises(ConfigError) as err:
        Store("postgresql://bob:Secr3t@127.0.0.1:54x2/test")
    assert "Secr3t" not in str(err.value) and "bob:***@" in str(err.value)
    started: list[tuple[list[str], dict | None]] = []
    monkeypatch.setattr(server.subprocess, "Popen", lambda args, env=None: started.append((args, env)))
    server._start_worker(JobsSpec(db="postgresql://bob:Secr3t@db.example/ts"), 0)
    [(args, env)] = started
    assert not any("Secr3t" in a for a in args) and env["TUNESMITH_DB"] == "postgresql://bob:Secr3t@db.example/ts"


def test_store_urls_that_cannot_work_are_config_errors_naming_them(tmp_path, monkeypatch) -> None:
    # a refused connection, an unknown driver: "internal error: OperationalError" with a traceback file; and
    # sqlite:///~/... opened a folder named "~" in the current directory
    import socket

    import pytest

    from tunesmith.errors import ConfigError

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with pytest.raises(ConfigError, match=rf"--db postgresql\+psycopg://bob:\*\*\*@127.0.0.1:{port}/x: cannot open the store"):
        Store(f"postgresql://bob:pw@127.0.0.1:{port}/x")
    with pytest.raises(ConfigError, match="no database driver"):
        Store("mysql://bob@127.0.0.1/x")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    store = Store("sqlite:///~/ts/store.db")
    assert (tmp_path / "home" / "ts" / "store.db").is_file() and not (tmp_path / "~").exists()
    assert store.home == tmp_path / "home" / "ts"
    store.close()
    # a search_path naming no schema: ProgrammingError with the migration's SQL, shown as an internal error
    with pytest.raises(ConfigError, match=r"cannot create the store's tables: no schema has been selected to create in; "
                                          r"check the URL's schema \(search_path\)"):
        Store(f"{PG_URL}?options=-csearch_path%3Dno_such_schema_here")
    # a file where the SQLite file's folder should be: FileExistsError, shown by the CLI as an internal error
    (tmp_path / "afile").write_text("")
    with pytest.raises(ConfigError, match=rf"--db sqlite:///{tmp_path}/afile/x.db: cannot make the folder "
                                          rf"{tmp_path}/afile for the SQLite file \(File exists"):
        Store(f"sqlite:///{tmp_path}/afile/x.db")


def test_an_upgrade_that_fails_half_way_leaves_the_store_as_it_was(store_url: str, monkeypatch) -> None:
    # pysqlite ran the DDL outside any transaction: an upgrade that died after 0003's first table left that table with
    # 0002 recorded, and every later open failed "table feedback already exists".
    import pytest
    from alembic.operations import Operations

    old = Store(store_url, migrate=False)
    old.migrate("0002")
    old.close()
    create_table = Operations.create_table

    def dying(self, name, *args, **kwargs):  # noqa: ANN001, ANN202 - Alembic's signature
        table = create_table(self, name, *args, **kwargs)
        if name == "feedback":
            raise KeyboardInterrupt  # as a process stopped mid-upgrade
        return table

    monkeypatch.setattr(Operations, "create_table", dying)
    with pytest.raises(KeyboardInterrupt):
        Store(store_url)
    monkeypatch.setattr(Operations, "create_table", create_table)
    half = Store(store_url, migrate=False)
    assert half.revision() == "0002" and "feedback" not in inspect(half.engine).get_table_names()
    half.close()
    store = Store(store_url)
    assert store.revision() == HEAD
    store.close()


def test_a_failed_foreign_key_check_changes_nothing(tmp_path) -> None:
    # "nothing was changed", said the check, after 0007 had made annotation_leases and copied annotation_items
    import sqlite3

    import pytest

    from tunesmith.errors import ConfigError

    path = tmp_path / "store.db"
    old = Store(f"sqlite:///{path}", migrate=False)
    old.migrate("0006")
    old.close()
    with sqlite3.connect(path) as c:  # another tool, foreign keys off, left an annotation of an item that is gone
        c.execute("INSERT INTO annotation_tasks (name, labels, instructions, overlap, created) VALUES ('t', '[\"a\"]', '', 1, 1.0)")
        c.execute("INSERT INTO annotations (task, item_seq, annotator, label, origin, created) "
                  "VALUES ('t', 999, 'bob', 'a', 'web', 1.0)")
    c.close()
    for _ in range(2):  # and the second try fails the same way, not on a table the first one left
        with pytest.raises(ConfigError, match="row 1 of table annotations refers to a row of annotation_items that is "
                                              "gone, so the schema upgrade was rolled back and nothing was changed"):
            Store(f"sqlite:///{path}")
    with sqlite3.connect(path) as c:
        tables = {name for (name,) in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert c.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchall() == [("0006",)]
    c.close()
    assert "annotation_leases" not in tables and not any(t.startswith("_alembic_tmp") for t in tables)


def test_a_store_a_newer_tunesmith_made_is_refused_naming_its_revision(store_url: str) -> None:
    import pytest

    from tunesmith.errors import ConfigError

    store = Store(store_url)
    with store.engine.begin() as c:
        c.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))
    store.close()
    with pytest.raises(ConfigError, match=rf"schema revision '9999', which a newer tunesmith made; this one knows "
                                          rf"revisions up to '{HEAD}'\. Upgrade tunesmith"):
        Store(store_url)


def test_a_database_holding_another_applications_jobs_table_is_a_config_error(store_url: str) -> None:
    # PostgreSQL: DuplicateTable (42P07) with the migration's SQL, shown as an internal error
    import pytest
    from sqlalchemy import create_engine

    from tunesmith.errors import ConfigError
    from tunesmith.store.db import normalize_url

    other = create_engine(normalize_url(store_url))
    with other.begin() as c:
        c.execute(text("CREATE TABLE jobs (id INTEGER)"))
    other.dispose()
    with pytest.raises(ConfigError, match=r"--db .*: cannot (open the store|create the store's tables): .*jobs\W* already "
                                          r"exists") as err:
        Store(store_url)
    if "postgresql" in store_url:
        assert "give tunesmith a database of its own, or a schema of its own" in str(err.value)


def test_more_store_urls_that_cannot_work_are_config_errors_naming_them() -> None:
    import pytest

    from tunesmith.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--db sqlite://tunesmith.db: Invalid SQLite URL.*sqlite:///relative/path.db"):
        Store("sqlite://tunesmith.db")  # two slashes: ArgumentError
    from sqlalchemy.engine import make_url

    url = make_url(PG_URL).set(password="Secr3t").render_as_string(hide_password=False)
    with pytest.raises(ConfigError, match=r'cannot open the store: invalid connection option "sslmdoe"; check the URL') \
            as err:  # a misspelt libpq option: ProgrammingError with no SQLSTATE
        Store(f"{url}?sslmdoe=disable")
    assert "Secr3t" not in str(err.value)


def test_an_in_memory_store_is_one_database_for_every_thread() -> None:
    # sqlite:// made the tables on the migrating connection only: the prediction log's thread found no such table
    from tunesmith.monitor.log import PredictionLog
    from tunesmith.store.schema import Prediction

    store = Store("sqlite://")
    log = PredictionLog(store)
    log.record("req-1", "m", "1", "predict", ["x"], [{"label": "a"}], 1.0)
    assert log.flush() and log.errors == 0
    seen: list[str] = []

    def read() -> None:  # another thread, as the server's request handlers
        with store.session() as s:
            seen.extend(s.scalars(select(Prediction.request_id)))

    reader = threading.Thread(target=read)
    reader.start()
    reader.join()
    assert seen == ["req-1"]
    log.close()
    store.close()
