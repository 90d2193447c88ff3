-- The older General Bots platform's tables that 0001 does not already cover:
-- packages, channels, logs, applications, schedules, per-instance settings, bot
-- users and groups, and the knowledge base (subjects, questions, answers,
-- alternates). docs/schema.md maps every old table to its new home.
--
-- Every row belongs to one instance and goes with it (ON DELETE CASCADE). Rows that
-- point at other instance-owned rows do so through (instance_id, id) composite
-- foreign keys, so a row can never reference another instance's user, group,
-- package, subject, question or answer. The UNIQUE (instance_id, id) constraints
-- that those keys need also serve as the "by instance" index of each table.
-- (ON DELETE SET NULL (column) needs PostgreSQL 15 or later.)

-- Packages deployed to an instance (the old GuaribasPackage): .gbkb, .gbdialog, ...
CREATE TABLE packages (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    instance_id uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    kind        text NOT NULL CHECK (kind IN ('gbai', 'gbapp', 'gbdata', 'gbdialog', 'gbdrive',
                                              'gbkb', 'gblib', 'gbot', 'gbtheme', 'gbui')),
    metadata    jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (instance_id, id),
    UNIQUE (instance_id, name)
);

-- Channels an instance's bot answers on (the old GuaribasChannel, which was a global
-- list of titles; channel keys lived in GuaribasInstance columns). Secrets such as
-- channel tokens are stored encrypted with the node's secret key, never in config.
CREATE TABLE channels (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    instance_id       uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    kind              text NOT NULL CHECK (kind IN ('web', 'whatsapp', 'teams', 'telegram', 'sms',
                                                    'email', 'voice', 'room', 'api')),
    name              text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    enabled           boolean NOT NULL DEFAULT true,
    config            jsonb NOT NULL DEFAULT '{}',
    secret_ciphertext bytea,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (instance_id, name)
);
CREATE INDEX channels_instance_kind ON channels (instance_id, kind);

-- Instance log lines (the old GuaribasLog). Append-only.
CREATE TABLE instance_logs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    level       text NOT NULL DEFAULT 'info'
                CHECK (level IN ('debug', 'info', 'warning', 'error')),
    message     text NOT NULL,
    details     jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX instance_logs_instance ON instance_logs (instance_id, created_at DESC);

-- Applications (.gbapp) enabled on an instance (the old GuaribasApplications).
CREATE TABLE applications (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    instance_id uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    enabled     boolean NOT NULL DEFAULT true,
    config      jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (instance_id, name)
);

-- Scheduled dialogs (the old GuaribasSchedule, written by SET SCHEDULE): one cron
-- expression (5 or 6 fields) per dialog and instance.
CREATE TABLE schedules (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    instance_id uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    dialog_name text NOT NULL CHECK (length(dialog_name) BETWEEN 1 AND 200),
    cron        text NOT NULL
                CHECK (array_length(regexp_split_to_array(btrim(cron), '\s+'), 1) BETWEEN 5 AND 6),
    enabled     boolean NOT NULL DEFAULT true,
    last_run_at timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (instance_id, dialog_name)
);
CREATE INDEX schedules_enabled ON schedules (instance_id) WHERE enabled;

-- Per-instance key/value settings (the old GuaribasAdmin).
CREATE TABLE instance_settings (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    instance_id uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    key         text NOT NULL CHECK (length(key) BETWEEN 1 AND 200),
    value       text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (instance_id, key)
);

-- People who talk to an instance's bot (the old GuaribasUser). system_id is the
-- channel's id for the person (the mobile number on WhatsApp/SMS). agent_mode 'human'
-- means a human agent (agent_system_id) has taken over the conversation. A NULL
-- locale means the instance's locale.
CREATE TABLE bot_users (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    instance_id     uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    system_id       text NOT NULL CHECK (length(system_id) BETWEEN 1 AND 200),
    display_name    text,
    email           text,
    locale          text,
    default_channel text CHECK (default_channel IN ('web', 'whatsapp', 'teams', 'telegram', 'sms',
                                                    'email', 'voice', 'room', 'api')),
    agent_mode      text NOT NULL DEFAULT 'bot' CHECK (agent_mode IN ('bot', 'human')),
    agent_system_id text,
    current_dialog  text,
    params          jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (instance_id, id),
    UNIQUE (instance_id, system_id)
);
CREATE INDEX bot_users_email ON bot_users (instance_id, lower(email)) WHERE email IS NOT NULL;
CREATE INDEX bot_users_human ON bot_users (instance_id) WHERE agent_mode = 'human';

-- Groups of bot users (the old GuaribasGroup).
CREATE TABLE bot_groups (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    instance_id uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (instance_id, id),
    UNIQUE (instance_id, name)
);

-- Group membership (the old GuaribasUserGroup). User and group must belong to the
-- same instance as the row.
CREATE TABLE bot_user_groups (
    instance_id uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    group_id    uuid NOT NULL,
    user_id     uuid NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, user_id),
    FOREIGN KEY (instance_id, group_id) REFERENCES bot_groups (instance_id, id) ON DELETE CASCADE,
    FOREIGN KEY (instance_id, user_id) REFERENCES bot_users (instance_id, id) ON DELETE CASCADE
);
CREATE INDEX bot_user_groups_user ON bot_user_groups (user_id);

-- Knowledge-base subjects, a tree (the old GuaribasSubject). Deleting a subject
-- deletes its subtree; deleting the package that brought it deletes it.
CREATE TABLE kb_subjects (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    instance_id         uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    package_id          uuid,
    parent_id           uuid CHECK (parent_id <> id),
    internal_id         text,
    title               text NOT NULL CHECK (length(title) BETWEEN 1 AND 500),
    description         text NOT NULL DEFAULT '',
    responsible_user_id uuid,
    metadata            jsonb NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (instance_id, id),
    UNIQUE (package_id, internal_id),
    FOREIGN KEY (instance_id, package_id) REFERENCES packages (instance_id, id) ON DELETE CASCADE,
    FOREIGN KEY (instance_id, parent_id) REFERENCES kb_subjects (instance_id, id) ON DELETE CASCADE,
    FOREIGN KEY (instance_id, responsible_user_id) REFERENCES bot_users (instance_id, id)
        ON DELETE SET NULL (responsible_user_id)
);
CREATE INDEX kb_subjects_parent ON kb_subjects (instance_id, parent_id);
CREATE INDEX kb_subjects_package ON kb_subjects (package_id) WHERE package_id IS NOT NULL;

-- Knowledge-base answers (the old GuaribasAnswer). prev_id/next_id chain answers
-- shown one after another; media is the URL or path of an attached file.
CREATE TABLE kb_answers (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    instance_id uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    package_id  uuid,
    content     text NOT NULL,
    format      text NOT NULL DEFAULT 'text'
                CHECK (format IN ('text', 'markdown', 'html', 'media', 'dialog')),
    media       text,
    prev_id     uuid CHECK (prev_id <> id),
    next_id     uuid CHECK (next_id <> id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (instance_id, id),
    FOREIGN KEY (instance_id, package_id) REFERENCES packages (instance_id, id) ON DELETE CASCADE,
    FOREIGN KEY (instance_id, prev_id) REFERENCES kb_answers (instance_id, id) ON DELETE SET NULL (prev_id),
    FOREIGN KEY (instance_id, next_id) REFERENCES kb_answers (instance_id, id) ON DELETE SET NULL (next_id)
);
CREATE INDEX kb_answers_package ON kb_answers (package_id) WHERE package_id IS NOT NULL;

-- Knowledge-base questions (the old GuaribasQuestion). subject_id is the most
-- specific subject (the old subject1..subject4 path is its chain of parents); a
-- question exists to lead to its answer, so it goes when the answer goes.
CREATE TABLE kb_questions (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    instance_id uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    package_id  uuid,
    subject_id  uuid,
    answer_id   uuid NOT NULL,
    content     text NOT NULL CHECK (length(content) >= 1),
    keywords    text[] NOT NULL DEFAULT '{}',
    skip_index  boolean NOT NULL DEFAULT false,
    metadata    jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (instance_id, id),
    FOREIGN KEY (instance_id, package_id) REFERENCES packages (instance_id, id) ON DELETE CASCADE,
    FOREIGN KEY (instance_id, subject_id) REFERENCES kb_subjects (instance_id, id)
        ON DELETE SET NULL (subject_id),
    FOREIGN KEY (instance_id, answer_id) REFERENCES kb_answers (instance_id, id) ON DELETE CASCADE
);
CREATE INDEX kb_questions_subject ON kb_questions (instance_id, subject_id);
CREATE INDEX kb_questions_answer ON kb_questions (answer_id);
CREATE INDEX kb_questions_package ON kb_questions (package_id) WHERE package_id IS NOT NULL;
CREATE INDEX kb_questions_keywords ON kb_questions USING gin (keywords);
CREATE INDEX kb_questions_text ON kb_questions USING gin (to_tsvector('simple', content))
    WHERE NOT skip_index;

-- Other phrasings of a question (the old GuaribasQuestionAlternate).
CREATE TABLE kb_question_alternates (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    instance_id uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    question_id uuid NOT NULL,
    content     text NOT NULL CHECK (length(content) >= 1),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (question_id, content),
    FOREIGN KEY (instance_id, question_id) REFERENCES kb_questions (instance_id, id) ON DELETE CASCADE
);
