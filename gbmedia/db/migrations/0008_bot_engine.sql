-- The dialog engine (gbmedia/bots/engine.py, docs/bots.md "The dialog engine"): an
-- instance's dialogs, the conversations a bot answers in and how far it has read
-- them, each (conversation, user)'s run with its state suspended at a HEAR, and the
-- schedules' next firing time.

-- An instance's dialogs (the old .gbdialog package's .bas files). Names are kept in
-- small letters: GO TO "Menu" and INCLUDE menu name the same dialog.
CREATE TABLE bot_dialogs (
    instance_id uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (name ~ '^[a-z0-9_][a-z0-9_.-]{0,99}$'),
    source      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, name)
);

-- A conversation with a bot member (role 'bot'): the last seq the bot has handled
-- (every message up to it was answered, or is one the bot ignores), and whether a
-- human has it (TRANSFER TO): while transferred_at is set the bot stays silent.
CREATE TABLE bot_conversations (
    conversation_id uuid PRIMARY KEY REFERENCES conversations (id) ON DELETE CASCADE,
    instance_id     uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    bot_identity    text NOT NULL,
    handled_seq     bigint NOT NULL DEFAULT 0 CHECK (handled_seq >= 0),
    transferred_to  text,   -- the human's identity; '' for anyone on duty
    transferred_by  text,   -- the user whose dialog transferred it
    transferred_at  timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX bot_conversations_instance ON bot_conversations (instance_id);

-- A run per (conversation, user): the latest one, its dialog and how it stands.
-- state is Run.snapshot() while the run waits at a HEAR, else NULL.
CREATE TABLE bot_runs (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    instance_id     uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_identity   text NOT NULL,
    dialog          text NOT NULL,
    status          text NOT NULL CHECK (status IN ('waiting', 'done', 'stopped', 'failed')),
    state           jsonb CHECK ((status = 'waiting') = (state IS NOT NULL)),
    last_error      text,
    started_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (conversation_id, user_identity)
);
CREATE INDEX bot_runs_instance ON bot_runs (instance_id, updated_at DESC);

-- When each schedule fires next. A node fires a schedule by moving next_at from the
-- value it read (UPDATE ... WHERE next_at = old): of several nodes, one wins.
ALTER TABLE schedules ADD COLUMN next_at timestamptz;
CREATE INDEX schedules_due ON schedules (next_at) WHERE enabled AND next_at IS NOT NULL;

-- The engine's sweep looks for conversations with a bot member.
CREATE INDEX conversation_members_bots ON conversation_members (conversation_id) WHERE role = 'bot';
