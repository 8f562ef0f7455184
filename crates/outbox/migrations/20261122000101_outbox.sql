-- Events written in the same transaction as the rows they announce, and
-- published to Redis Streams by the relay.
CREATE TABLE outbox (
    id             bigserial   PRIMARY KEY,
    topic          text        NOT NULL,
    message_key    text        NOT NULL,
    message_id     text        NOT NULL UNIQUE,
    schema_version integer     NOT NULL,
    payload        jsonb       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    published_at   timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

-- Wake the relay when rows commit, instead of making it poll.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
