-- The tables a bot's dialogs declare (TABLE name ... END TABLE) and the rows they
-- SAVE, FIND, MERGE and DELETE. A dialog's table is data of its instance, not a
-- PostgreSQL table: its rows are JSON objects in one shared table, so a dialog never
-- issues DDL and every query carries the instance (docs/bots.md, "Data").

CREATE TABLE bot_tables (
    instance_id uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (name ~ '^[A-Za-z_][A-Za-z0-9_]{0,62}$'),
    fields      jsonb NOT NULL CHECK (jsonb_typeof(fields) = 'array'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, name)
);

CREATE TABLE bot_rows (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id uuid NOT NULL,
    table_name  text NOT NULL,
    data        jsonb NOT NULL CHECK (jsonb_typeof(data) = 'object'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (instance_id, table_name) REFERENCES bot_tables (instance_id, name) ON DELETE CASCADE
);
CREATE INDEX bot_rows_table ON bot_rows (instance_id, table_name, id);
