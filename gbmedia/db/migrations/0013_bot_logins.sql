-- HEAR ... AS LOGIN (gbmedia/bots/login.py, docs/bots.md "Signing in"): a one-time code a
-- bot gave the user of a run, kept only as its SHA-256, until the person signs in with it
-- (POST /api/v1/bots/login with an access token of the instance: verified_identity is
-- the token's identity) and the run reads it, once. One pending code per run's user.
CREATE TABLE bot_logins (
    code_hash         bytea PRIMARY KEY CHECK (length(code_hash) = 32),
    instance_id       uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    conversation_id   uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_identity     text NOT NULL,
    expires_at        timestamptz NOT NULL,
    verified_identity text,
    verified_at       timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (conversation_id, user_identity)
);
CREATE INDEX bot_logins_expiry ON bot_logins (expires_at);
