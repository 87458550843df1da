"""The database file: its schema, the migrations that bring an older file up to date,
and the PRAGMAs every connection runs with (their reasons are in `database.py`'s docstring).

`application_id` marks a file as agl's, so `agl serve` refuses a database it did not make
instead of writing into it; `user_version` numbers the schema, and `MIGRATIONS[v]` takes a
file from version v - 1 to v when it is opened (each in one transaction).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agl_cli.store.errors import StoreError

APPLICATION_ID = 0x41474C31  # "AGL1"
SCHEMA_VERSION = 10
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024

SCHEMA = """
CREATE TABLE tasks (
    id              INTEGER PRIMARY KEY,
    rollout_id      TEXT NOT NULL UNIQUE,
    status          TEXT NOT NULL,
    queue_pos       INTEGER,
    deadline        REAL,
    input           TEXT NOT NULL,
    mode            TEXT,
    resources_id    TEXT,
    metadata        TEXT NOT NULL,
    create_time     REAL NOT NULL,
    last_claim_time REAL,
    num_claims      INTEGER NOT NULL DEFAULT 0,
    completed_time  REAL,
    duplicates      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX tasks_queue ON tasks(queue_pos) WHERE status = 'queued';
CREATE INDEX tasks_deadline ON tasks(deadline) WHERE status = 'claimed';
CREATE INDEX tasks_status ON tasks(status, id);

CREATE TABLE rollouts (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id    TEXT NOT NULL UNIQUE,
    received_time REAL NOT NULL,
    attempt       INTEGER,
    unsolicited   INTEGER NOT NULL,
    consumed      INTEGER NOT NULL DEFAULT 0,
    body          TEXT NOT NULL
);
CREATE INDEX rollouts_unconsumed ON rollouts(seq) WHERE consumed = 0;

CREATE TABLE resources (
    resources_id TEXT PRIMARY KEY,
    publish_seq  INTEGER NOT NULL UNIQUE,
    create_time  REAL NOT NULL,
    update_time  REAL NOT NULL,
    version      INTEGER NOT NULL,
    body         TEXT NOT NULL
);

CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO counters VALUES ('duplicates', 0);
"""

REWARD_WIDTHS = (1, 60, 3600)  # the seconds a bucket of `rewards` spans, finest first
# Tasks worth a look: failed, or handed out more than once (an attempt timed out or failed).
TROUBLED = "status = 'failed' OR num_claims > 1"


def _backfill(width: int) -> str:
    """The rewards of the rollouts already kept, summed into buckets `width` seconds wide."""
    return (
        f"INSERT INTO rewards SELECT {width}, CAST(received_time / {width} AS INTEGER), coalesce(mode, ''),"
        " count(*), count(reward), coalesce(sum(reward), 0) FROM rollouts GROUP BY 2, 3;\n"
    )


def _add_reward(width: int, row: str, sign: int) -> str:
    """A trigger's statement adding (or taking away) one rollout to its bucket."""
    return (
        f"    INSERT INTO rewards VALUES ({width}, CAST({row}.received_time / {width} AS INTEGER),"
        f" coalesce({row}.mode, ''), {sign}, {sign} * ({row}.reward IS NOT NULL), {sign} * coalesce({row}.reward, 0))"
        " ON CONFLICT DO UPDATE SET rollouts = rollouts + excluded.rollouts,"
        " rewarded = rewarded + excluded.rewarded, total = total + excluded.total;\n"
    )


# A staged task's place in `staging` (schema 9): its batch's key times this, plus its
# position in the batch, so that a batch is one range of the table's rowids.
PLACES_PER_BATCH = 1 << 32

# What a migration's time grows with, where it grows with the file (said before an upgrade).
MIGRATION_COSTS = {6: "a few seconds for each million attempts it holds"}

# MIGRATIONS[v] takes a database from schema v - 1 to v; a new file starts at 1.
MIGRATIONS = {
    2: """
CREATE TABLE batches (
    id           INTEGER PRIMARY KEY,
    batch_id     TEXT NOT NULL UNIQUE,
    created_time REAL NOT NULL,
    staged       INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE staging (
    batch        INTEGER NOT NULL,
    pos          INTEGER NOT NULL,
    rollout_id   TEXT NOT NULL,
    input        TEXT NOT NULL,
    mode         TEXT,
    resources_id TEXT,
    metadata     TEXT NOT NULL,
    PRIMARY KEY (batch, pos)
) WITHOUT ROWID;
CREATE INDEX rollouts_unsolicited ON rollouts(seq) WHERE unsolicited = 1;
""",
    3: """
ALTER TABLE batches ADD COLUMN committed_time REAL;
ALTER TABLE batches ADD COLUMN base_pos INTEGER;
""",
    # The store API: a task's fine-grained status (`phase`, see store/lifecycle.py), its
    # RolloutConfig (NULL: the daemon's legacy policy) and end; every claim an attempt
    # (a task claimed before this version gets its latest one); spans; workers.
    4: """
ALTER TABLE tasks ADD COLUMN phase TEXT NOT NULL DEFAULT 'queuing';
ALTER TABLE tasks ADD COLUMN config TEXT;
ALTER TABLE tasks ADD COLUMN end_time REAL;
UPDATE tasks SET
    phase = CASE status
        WHEN 'queued' THEN 'requeuing' WHEN 'claimed' THEN 'preparing' WHEN 'completed' THEN 'succeeded'
        ELSE status END,
    end_time = completed_time
WHERE status != 'queued' OR num_claims > 0;
CREATE TABLE attempts (
    rollout_id          TEXT NOT NULL,
    sequence_id         INTEGER NOT NULL,
    attempt_id          TEXT NOT NULL,
    start_time          REAL NOT NULL,
    end_time            REAL,
    status              TEXT NOT NULL,
    worker_id           TEXT,
    last_heartbeat_time REAL,
    metadata            TEXT,
    PRIMARY KEY (rollout_id, sequence_id)
) WITHOUT ROWID;
INSERT INTO attempts (rollout_id, sequence_id, attempt_id, start_time, end_time, status)
    SELECT rollout_id, num_claims, 'at-' || lower(hex(randomblob(4))), coalesce(last_claim_time, create_time),
        completed_time,
        CASE status WHEN 'claimed' THEN 'preparing' WHEN 'completed' THEN 'succeeded'
            WHEN 'cancelled' THEN 'preparing' ELSE 'timeout' END
    FROM tasks WHERE num_claims > 0;
CREATE TABLE spans (
    id          INTEGER PRIMARY KEY,
    rollout_id  TEXT NOT NULL,
    attempt_id  TEXT NOT NULL,
    span_id     TEXT NOT NULL,
    sequence_id INTEGER NOT NULL,
    trace_id    TEXT NOT NULL,
    parent_id   TEXT,
    name        TEXT NOT NULL,
    start_time  REAL,
    end_time    REAL,
    body        TEXT NOT NULL,
    UNIQUE (rollout_id, attempt_id, span_id)
);
CREATE INDEX spans_order ON spans(rollout_id, sequence_id);
CREATE TABLE span_sequences (
    rollout_id TEXT PRIMARY KEY,
    last       INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE workers (
    id                  INTEGER PRIMARY KEY,
    worker_id           TEXT NOT NULL UNIQUE,
    status              TEXT NOT NULL DEFAULT 'unknown',
    heartbeat_stats     TEXT,
    last_heartbeat_time REAL,
    last_dequeue_time   REAL,
    last_busy_time      REAL,
    last_idle_time      REAL,
    current_rollout_id  TEXT,
    current_attempt_id  TEXT
);
""",
    # What people look at, kept as rows change so that no read counts a million rows:
    # tasks per status (triggers), the tasks of a committed batch moved so far, rollouts
    # and unsolicited ones (counters), and each rollout's mode and reward, summed per mode and second, minute
    # and hour of arrival (`rewards`: the dashboard's chart). Tasks that failed or needed
    # more than one attempt have an index of their own, most recent claim last.
    5: f"""
CREATE TABLE task_counts (
    status TEXT PRIMARY KEY,
    tasks  INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO task_counts (status, tasks)
    SELECT value, (SELECT count(*) FROM tasks WHERE tasks.status = value)
    FROM json_each('["queued", "claimed", "completed", "failed", "cancelled"]');
CREATE TRIGGER tasks_counted AFTER INSERT ON tasks BEGIN
    UPDATE task_counts SET tasks = tasks + 1 WHERE status = NEW.status;
END;
CREATE TRIGGER tasks_recounted AFTER UPDATE OF status ON tasks WHEN OLD.status != NEW.status BEGIN
    UPDATE task_counts SET tasks = tasks - 1 WHERE status = OLD.status;
    UPDATE task_counts SET tasks = tasks + 1 WHERE status = NEW.status;
END;
CREATE TRIGGER tasks_uncounted AFTER DELETE ON tasks BEGIN
    UPDATE task_counts SET tasks = tasks - 1 WHERE status = OLD.status;
END;
ALTER TABLE batches ADD COLUMN moved INTEGER NOT NULL DEFAULT 0;
UPDATE batches SET moved = staged - (SELECT count(*) FROM staging WHERE staging.batch = batches.id)
WHERE committed_time IS NOT NULL;
CREATE INDEX tasks_troubled ON tasks(last_claim_time) WHERE {TROUBLED};

ALTER TABLE rollouts ADD COLUMN mode TEXT;
ALTER TABLE rollouts ADD COLUMN reward REAL;
UPDATE rollouts SET reward = json_extract(body, '$.final_reward'), mode = coalesce(
    json_extract(body, '$.task.mode'), (SELECT mode FROM tasks WHERE tasks.rollout_id = rollouts.rollout_id));
INSERT INTO counters VALUES ('rollouts', (SELECT count(*) FROM rollouts)),
    ('unsolicited', (SELECT count(*) FROM rollouts WHERE unsolicited = 1));
CREATE TABLE rewards (
    width    INTEGER NOT NULL,
    bucket   INTEGER NOT NULL,
    mode     TEXT NOT NULL,
    rollouts INTEGER NOT NULL,
    rewarded INTEGER NOT NULL,
    total    REAL NOT NULL,
    PRIMARY KEY (width, bucket, mode)
) WITHOUT ROWID;
{"".join(_backfill(width) for width in REWARD_WIDTHS)}
CREATE TRIGGER rollouts_counted AFTER INSERT ON rollouts BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'rollouts';
{"".join(_add_reward(width, "NEW", 1) for width in REWARD_WIDTHS)}END;
CREATE TRIGGER unsolicited_counted AFTER INSERT ON rollouts WHEN NEW.unsolicited = 1 BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'unsolicited';
END;
CREATE TRIGGER unsolicited_uncounted AFTER DELETE ON rollouts WHEN OLD.unsolicited = 1 BEGIN
    UPDATE counters SET value = value - 1 WHERE name = 'unsolicited';
END;
CREATE TRIGGER rollouts_uncounted AFTER DELETE ON rollouts BEGIN
    UPDATE counters SET value = value - 1 WHERE name = 'rollouts';
{"".join(_add_reward(width, "OLD", -1) for width in REWARD_WIDTHS)}END;
""",
    # Attempts kept in the order of their tasks (`tasks.id`), not of their random rollout
    # ids: a group of claims adds its attempts to a page or two, and their reports end them
    # there, where keyed by rollout id each landed on a page of its own. A rollout id finds
    # its attempts through its task (`rows.TASK_ID`).
    6: """
CREATE TABLE attempts_by_task (
    task                INTEGER NOT NULL,
    sequence_id         INTEGER NOT NULL,
    rollout_id          TEXT NOT NULL,
    attempt_id          TEXT NOT NULL,
    start_time          REAL NOT NULL,
    end_time            REAL,
    status              TEXT NOT NULL,
    worker_id           TEXT,
    last_heartbeat_time REAL,
    metadata            TEXT,
    PRIMARY KEY (task, sequence_id)
) WITHOUT ROWID;
INSERT INTO attempts_by_task
    SELECT t.id, a.sequence_id, a.rollout_id, a.attempt_id, a.start_time, a.end_time, a.status, a.worker_id,
        a.last_heartbeat_time, a.metadata
    FROM attempts a JOIN tasks t ON t.rollout_id = a.rollout_id;
DROP TABLE attempts;
ALTER TABLE attempts_by_task RENAME TO attempts;
""",
    # Rollouts past the retention setting are deleted: the dashboard's chart of rewards
    # keeps them (a run's curve from its start), the count of rollouts kept does not.
    7: """
DROP TRIGGER rollouts_uncounted;
CREATE TRIGGER rollouts_uncounted AFTER DELETE ON rollouts BEGIN
    UPDATE counters SET value = value - 1 WHERE name = 'rollouts';
END;
""",
    # Rollouts that ended without a result (failed, cancelled), by when they ended: the
    # retention setting deletes their spans in that order, as it deletes results in theirs.
    # A trigger lists them: a claim or a report pays only its test of the new status.
    8: """
CREATE TABLE ended_without_result (
    end_time   REAL NOT NULL,
    rollout_id TEXT NOT NULL,
    PRIMARY KEY (end_time, rollout_id)
) WITHOUT ROWID;
INSERT OR IGNORE INTO ended_without_result
    SELECT coalesce(end_time, completed_time, last_claim_time, create_time), rollout_id
    FROM tasks WHERE status IN ('failed', 'cancelled');
CREATE TRIGGER ended_without_result_kept AFTER UPDATE OF status ON tasks
WHEN NEW.status IN ('failed', 'cancelled') AND OLD.status != NEW.status BEGIN
    INSERT OR IGNORE INTO ended_without_result
        VALUES (coalesce(NEW.end_time, NEW.completed_time, NEW.last_claim_time, NEW.create_time), NEW.rollout_id);
END;
""",
    # Staged tasks in a rowid table: keyed by (batch, pos) WITHOUT ROWID, a task of more
    # than about 1 KB spilled into a page of its own (SQLite keeps less of a row on the
    # page in such a table), so staging tasks of 1-2 KB took three times their size.
    # And an end for the tasks that failed or were cancelled under schema 1 to 3, which
    # left `completed_time` (schema 4's source of `end_time`) empty for them: the end
    # schema 8 listed them by, so that retention takes them when it comes.
    9: f"""
UPDATE tasks SET end_time = coalesce(completed_time, last_claim_time, create_time)
WHERE status IN ('failed', 'cancelled') AND end_time IS NULL;
CREATE TABLE staging_by_place (
    place        INTEGER PRIMARY KEY,
    rollout_id   TEXT NOT NULL,
    input        TEXT NOT NULL,
    mode         TEXT,
    resources_id TEXT,
    metadata     TEXT NOT NULL
);
INSERT INTO staging_by_place
    SELECT batch * {PLACES_PER_BATCH} + pos, rollout_id, input, mode, resources_id, metadata FROM staging;
DROP TABLE staging;
ALTER TABLE staging_by_place RENAME TO staging;
""",
    # A store-API enqueue too large for one write is staged as a batch: its rollouts keep
    # their own config and start time (NULL for a task of `agl queue`: the policy and the
    # commit's time).
    10: """
ALTER TABLE staging ADD COLUMN config TEXT;
ALTER TABLE staging ADD COLUMN create_time REAL;
""",
}


class NotAglDatabaseError(StoreError):
    pass


def open_connection(path: Path) -> sqlite3.Connection:
    """Open an agl database (a new one is the empty file `files.hold` made), refusing files
    that are not agl's."""
    try:
        conn = connect(path)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"Cannot open the database {path}: {exc}.") from None
    try:
        _prepare(conn, path)
    except sqlite3.DatabaseError as exc:
        conn.close()
        if "not a database" in str(exc) or "malformed" in str(exc):
            raise NotAglDatabaseError(f"{path} is not an agl database ({exc}).") from None
        raise StoreError(f"Cannot use the database {path}: {exc}.") from None
    except StoreError:
        conn.close()
        raise
    return conn


def version_of(path: Path) -> int | None:
    """The schema version of agl's database at `path`, before it is opened for use; None
    if there is no such file, or it is not agl's (opening it then says why)."""
    if not path.is_file():
        return None
    try:
        conn = connect(path)
    except sqlite3.Error:
        return None
    try:
        [(app_id,)] = conn.execute("PRAGMA application_id").fetchall()
        [(version,)] = conn.execute("PRAGMA user_version").fetchall()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return int(version) if app_id == APPLICATION_ID else None


def open_memory_connection() -> sqlite3.Connection:
    """An agl database that lives in memory, gone with its connection."""
    conn = connect(":memory:")
    _prepare(conn, Path(":memory:"))
    return conn


def connect(path: Path | str) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


def _prepare(conn: sqlite3.Connection, path: Path) -> None:
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    has_tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0
    if has_tables and app_id != APPLICATION_ID:
        raise NotAglDatabaseError(f"{path} is not an agl database; refusing to use it.")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # durable writes sync the WAL themselves
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
    conn.execute("PRAGMA secure_delete=FAST")  # where SQLite was built with it on (Debian's)
    if not has_tables:
        conn.executescript(
            f"BEGIN IMMEDIATE;\n{SCHEMA}\n"
            f"PRAGMA application_id={APPLICATION_ID};\nPRAGMA user_version=1;\nCOMMIT;"
        )
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path} was written by a newer agl (schema {version}); upgrade agl to use it.")
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.executescript(f"BEGIN IMMEDIATE;\n{MIGRATIONS[target]}\nPRAGMA user_version={target};\nCOMMIT;")
