-- Runtime settings: every version kept, with who made it and why.
CREATE TABLE settings_versions (
    version     bigint PRIMARY KEY,
    settings    jsonb NOT NULL,
    author      text NOT NULL,
    reason      text NOT NULL DEFAULT '',
    -- Set when this version restores an earlier one.
    restores    bigint REFERENCES settings_versions (version),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- What each running instance applied, for the admin page's convergence view.
CREATE TABLE settings_instances (
    instance         text PRIMARY KEY,
    service          text NOT NULL,
    applied_version  bigint NOT NULL,
    applied_at       timestamptz NOT NULL,
    seen_at          timestamptz NOT NULL
);
