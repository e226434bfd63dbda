"""The buffer's tables, as the migrations that create them (sleepfed.board.buffer.connection
applies them). Raw readings may be evicted; every other table is kept."""

from __future__ import annotations

# Each entry migrates the schema from version i to i + 1 (PRAGMA user_version).
MIGRATIONS: list[str] = [
    """
    CREATE TABLE readings (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        kind INTEGER NOT NULL,
        value REAL NOT NULL,
        source TEXT NOT NULL
    );
    CREATE INDEX readings_ts ON readings(ts);
    CREATE TABLE stage_labels (
        ts REAL PRIMARY KEY,
        stage INTEGER NOT NULL,
        source TEXT NOT NULL
    );
    CREATE TABLE night_reports (
        night TEXT PRIMARY KEY,
        quality TEXT NOT NULL CHECK (quality IN ('good', 'poor')),
        reported_at REAL NOT NULL
    );
    CREATE TABLE nights (
        night TEXT PRIMARY KEY,
        start_ts REAL NOT NULL,
        end_ts REAL NOT NULL,
        epochs INTEGER NOT NULL,
        windows INTEGER NOT NULL,
        labelled_windows INTEGER NOT NULL,
        reference_efficiency REAL,
        extracted_at REAL NOT NULL
    );
    CREATE TABLE windows (
        night TEXT NOT NULL,
        start_ts REAL NOT NULL,
        features TEXT NOT NULL,
        label INTEGER,
        PRIMARY KEY (night, start_ts)
    );
    CREATE TABLE models (
        version INTEGER PRIMARY KEY,
        server_round INTEGER NOT NULL,
        run_id TEXT NOT NULL,
        arrays BLOB NOT NULL,
        received_at REAL NOT NULL
    );
    CREATE TABLE predictions (
        night TEXT NOT NULL,
        model_version INTEGER NOT NULL,
        efficiency REAL NOT NULL,
        quality TEXT NOT NULL,
        predicted_at REAL NOT NULL,
        PRIMARY KEY (night, model_version)
    );
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # The person's own model (sleepfed.board.nights.personal_model), one per global model it
    # was fine-tuned from, and which model made each prediction.
    """
    CREATE TABLE personal_models (
        base_version INTEGER PRIMARY KEY,
        arrays BLOB NOT NULL,
        train_windows INTEGER NOT NULL,
        held_out_windows INTEGER NOT NULL,
        global_loss REAL NOT NULL,
        personal_loss REAL NOT NULL,
        global_accuracy REAL NOT NULL,
        personal_accuracy REAL NOT NULL,
        kept INTEGER NOT NULL,
        made_at REAL NOT NULL
    );
    ALTER TABLE predictions ADD COLUMN model_kind TEXT NOT NULL DEFAULT 'global';
    """,
    # Nights without a single movement reading (a plain heart-rate strap) and the model head
    # that predicted each night (sleepfed.model.logistic: full or no_movement).
    """
    ALTER TABLE nights ADD COLUMN movement INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE predictions ADD COLUMN head TEXT NOT NULL DEFAULT 'full';
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
