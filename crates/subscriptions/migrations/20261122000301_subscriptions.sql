-- What people follow. The query is kept as typed; the application parses
-- and validates it before storing.
CREATE TABLE subscriptions (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    bigint      NOT NULL REFERENCES users ON DELETE CASCADE,
    name       text        NOT NULL,
    categories text[]      NOT NULL DEFAULT '{}',
    query      text,
    authors    text[]      NOT NULL DEFAULT '{}',
    paused     boolean     NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_user ON subscriptions (user_id);

-- The change feed matchers follow to keep their index current. Each
-- change records the transaction that made it: a reader that remembers
-- the oldest transaction still running when it last read (its snapshot's
-- xmin) and next reads every change from that transaction on misses none,
-- even changes whose transactions commit out of order.
CREATE TABLE subscription_changes (
    subscription_id bigint      NOT NULL,
    xid             xid8        NOT NULL DEFAULT pg_current_xact_id(),
    changed_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscription_changes_xid ON subscription_changes (xid);

CREATE FUNCTION subscription_changed() RETURNS trigger AS $$
BEGIN
    INSERT INTO subscription_changes (subscription_id)
    VALUES (CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END);
    -- Wakes followers at once instead of at their next poll.
    PERFORM pg_notify('subscription_changes', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER subscriptions_changed
    AFTER INSERT OR UPDATE OR DELETE ON subscriptions
    FOR EACH ROW EXECUTE FUNCTION subscription_changed();
