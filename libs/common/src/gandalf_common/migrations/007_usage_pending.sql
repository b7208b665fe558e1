-- Requests the ingress admitted (its `started` usage event) whose `finished`
-- event has not been written yet. The usage writer deletes a request's row
-- in the transaction that writes its finished event; a row older than the
-- deadline (usage.started_deadline) means the ingress died mid-request, and
-- the sweeper turns it into a provisional raw row billed from the estimate.
CREATE TABLE usage_pending (
    request_id         text PRIMARY KEY,
    created_at         timestamptz NOT NULL,                -- request arrival (event ts)
    org_id             text NOT NULL DEFAULT '',
    team_id            text NOT NULL DEFAULT '',
    key_id             text NOT NULL DEFAULT '',
    user_id            text NOT NULL DEFAULT '',
    auth               text NOT NULL DEFAULT '',
    endpoint           text NOT NULL DEFAULT '',
    model              text NOT NULL DEFAULT '',
    stream             bool NOT NULL DEFAULT false,
    estimated_tokens   bigint NOT NULL DEFAULT 0,
    estimated_cost_usd numeric(18, 8) NOT NULL DEFAULT 0,
    received_at        timestamptz NOT NULL DEFAULT now()   -- the deadline counts from here
);
CREATE INDEX usage_pending_received_idx ON usage_pending (received_at);

-- A row billed from a started event alone (status_code 0, error_class
-- 'ingress_lost', estimated): its finished event, if it comes, replaces it.
ALTER TABLE usage_records ADD COLUMN provisional bool NOT NULL DEFAULT false;
CREATE INDEX usage_records_provisional_idx ON usage_records (request_id) WHERE provisional;
