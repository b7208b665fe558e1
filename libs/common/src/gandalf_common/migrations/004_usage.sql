-- Usage service: the rest of the usage event on the raw rows, and indexes
-- for the spend queries (sum of a key's, team's or org's daily rollups
-- since the start of its budget period).

ALTER TABLE usage_records
    ADD COLUMN auth        text NOT NULL DEFAULT '',     -- apikey | jwt | admin_key
    ADD COLUMN endpoint    text NOT NULL DEFAULT '',     -- chat | embed | native:<kind>
    ADD COLUMN coalesced   bool NOT NULL DEFAULT false,  -- served by another request's call
    ADD COLUMN estimated   bool NOT NULL DEFAULT false,  -- token counts are estimates
    ADD COLUMN ingested_at timestamptz NOT NULL DEFAULT now();  -- created_at is the event time

CREATE INDEX usage_rollups_daily_key_idx ON usage_rollups (key_id, bucket)
    WHERE period = 'daily';
CREATE INDEX usage_rollups_daily_team_idx ON usage_rollups (team_id, bucket)
    WHERE period = 'daily';
CREATE INDEX usage_rollups_daily_org_idx ON usage_rollups (org_id, bucket)
    WHERE period = 'daily';
