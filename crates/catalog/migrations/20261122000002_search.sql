-- Full-text search over titles (weighted higher) and abstracts.
ALTER TABLE papers ADD COLUMN search tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector('english', title), 'A')
    || setweight(to_tsvector('english', abstract), 'B')
) STORED;
CREATE INDEX papers_search ON papers USING gin (search);
CREATE INDEX papers_first_seen_at ON papers (first_seen_at DESC);
