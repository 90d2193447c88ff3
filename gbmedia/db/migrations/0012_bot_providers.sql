-- The outside services an instance's dialogs and keyword API calls use (gbmedia/bots/providers.py):
-- one provider per instance and service (mail, sms, crm...), its kind (smtp, webhook,
-- tesseract), its plain settings, and its secret (an SMTP password, a webhook's signing key)
-- encrypted with the node's secret key. docs/schema.md describes the columns.
-- (Numbered 0012: 0010 and 0011 are other branches'.)

CREATE TABLE bot_providers (
    instance_id      uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    service          text NOT NULL CHECK (service ~ '^[a-z]+$'),
    kind             text NOT NULL CHECK (kind IN ('smtp', 'webhook', 'tesseract')),
    settings         jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object'),
    secret_encrypted bytea,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, service)
);
