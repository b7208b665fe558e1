-- Governance: providers carry everything the adapters need (hosting, cloud
-- auth, model mapping) with secrets sealed by the gateway's AES-GCM key;
-- budgets have a period at every level; auth settings (JWT/OIDC) live in
-- one keyed table.

ALTER TABLE providers
    ADD COLUMN max_concurrency int  NOT NULL DEFAULT 256,
    ADD COLUMN hosting         text NOT NULL DEFAULT '',
    ADD COLUMN region          text NOT NULL DEFAULT '',
    ADD COLUMN project         text NOT NULL DEFAULT '',
    ADD COLUMN api_version     text NOT NULL DEFAULT '',
    ADD COLUMN model_map       jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN auth_type       text NOT NULL DEFAULT 'api_key',
    ADD COLUMN auth            jsonb NOT NULL DEFAULT '{}'::jsonb,  -- non-secret auth fields
    ADD COLUMN secrets_enc     text NOT NULL DEFAULT '',            -- sealed, never returned
    ADD COLUMN updated_at      timestamptz NOT NULL DEFAULT now();

ALTER TABLE organizations ADD COLUMN budget_period text;
ALTER TABLE teams ADD COLUMN budget_period text;
ALTER TABLE routes ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();

CREATE TABLE auth_settings (
    name       text PRIMARY KEY,           -- 'jwt'
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
