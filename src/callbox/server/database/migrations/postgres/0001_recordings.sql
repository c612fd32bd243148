-- Recording metadata: one row per recording of every node (see store/recordings.py).
CREATE TABLE recordings (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL,
    call_id     TEXT NOT NULL,
    control_id  TEXT NOT NULL,
    state       TEXT NOT NULL,
    format      TEXT NOT NULL,
    channels    INTEGER NOT NULL,
    direction   TEXT NOT NULL,
    duration    DOUBLE PRECISION,
    size        BIGINT,
    url         TEXT NOT NULL,
    path        TEXT NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL,
    start_time  DOUBLE PRECISION,
    end_time    DOUBLE PRECISION,
    reason      TEXT,
    status_url  TEXT NOT NULL DEFAULT '',
    params      JSONB NOT NULL DEFAULT '{}',
    location    TEXT NOT NULL DEFAULT ''
);
CREATE INDEX recordings_by_project ON recordings (project_id, created_at DESC, id DESC);
CREATE INDEX recordings_by_state ON recordings (state);
