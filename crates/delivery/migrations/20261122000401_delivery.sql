-- Where a person receives papers.
CREATE TABLE channels (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         bigint      NOT NULL REFERENCES users ON DELETE CASCADE,
    kind            text        NOT NULL CHECK (kind IN ('email', 'webhook', 'slack', 'in_app')),
    -- The address or URL; empty for in-app.
    target          text        NOT NULL DEFAULT '',
    -- Webhook signing secret (Standard Webhooks `whsec_` form).
    secret          text,
    frequency       text        NOT NULL DEFAULT 'instant' CHECK (frequency IN ('instant', 'daily')),
    enabled         boolean     NOT NULL DEFAULT true,
    -- Why it was turned off: unsubscribed, or the target refused for good.
    disabled_reason text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX channels_target ON channels (user_id, kind, target);

-- Papers that matched a person's subscriptions: their feed.
CREATE TABLE matches (
    user_id          bigint      NOT NULL REFERENCES users ON DELETE CASCADE,
    arxiv_id         text        NOT NULL,
    version          integer     NOT NULL,
    subscription_ids bigint[]    NOT NULL,
    matched_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, arxiv_id)
);
CREATE INDEX matches_feed ON matches (user_id, matched_at DESC, arxiv_id);

-- At most one delivery per person, paper and channel; its state moves
-- queued -> sending -> sent (or failed) in the same transactions that
-- record the send, so a redelivered message can tell what happened.
CREATE TABLE deliveries (
    user_id    bigint      NOT NULL REFERENCES users ON DELETE CASCADE,
    arxiv_id   text        NOT NULL,
    channel_id bigint      NOT NULL REFERENCES channels ON DELETE CASCADE,
    version    integer     NOT NULL,
    state      text        NOT NULL DEFAULT 'queued'
                           CHECK (state IN ('queued', 'sending', 'sent', 'failed')),
    -- The digest that carries it, for daily channels.
    digest_id  bigint,
    attempts   integer     NOT NULL DEFAULT 0,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at    timestamptz,
    -- In-app deliveries are read in the inbox.
    read_at    timestamptz,
    PRIMARY KEY (user_id, arxiv_id, channel_id)
);
CREATE INDEX deliveries_channel_queued ON deliveries (channel_id) WHERE state = 'queued';
CREATE INDEX deliveries_inbox ON deliveries (channel_id, sent_at DESC) WHERE state = 'sent';

-- One digest per daily channel and local day.
CREATE TABLE digests (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel_id bigint      NOT NULL REFERENCES channels ON DELETE CASCADE,
    local_date date        NOT NULL,
    state      text        NOT NULL DEFAULT 'open'
                           CHECK (state IN ('open', 'sending', 'sent', 'failed')),
    papers     integer     NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at    timestamptz,
    last_error text,
    UNIQUE (channel_id, local_date)
);

-- A thumbs up (1) or down (-1) per person and paper.
CREATE TABLE feedback (
    user_id    bigint      NOT NULL REFERENCES users ON DELETE CASCADE,
    arxiv_id   text        NOT NULL,
    vote       smallint    NOT NULL CHECK (vote IN (-1, 1)),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, arxiv_id)
);
