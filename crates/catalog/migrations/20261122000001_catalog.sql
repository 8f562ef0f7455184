-- Papers, one row per version. Cross-listings of a version share its row.
CREATE TABLE papers (
    arxiv_id         text        NOT NULL,
    version          integer     NOT NULL CHECK (version > 0),
    title            text        NOT NULL,
    abstract         text        NOT NULL,
    authors          jsonb       NOT NULL,
    categories       text[]      NOT NULL,
    primary_category text        NOT NULL,
    published_at     timestamptz,
    updated_at       timestamptz,
    doi              text,
    journal_ref      text,
    comment          text,
    license          text,
    abs_url          text        NOT NULL,
    pdf_url          text,
    first_seen_at    timestamptz NOT NULL DEFAULT now(),
    changed_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (arxiv_id, version)
);
CREATE INDEX papers_categories ON papers USING gin (categories);
CREATE INDEX papers_published_at ON papers (published_at DESC);

-- One summary per paper version and prompt version.
CREATE TABLE summaries (
    arxiv_id       text        NOT NULL,
    version        integer     NOT NULL,
    prompt_version integer     NOT NULL,
    provider       text        NOT NULL,
    model          text        NOT NULL,
    text           text        NOT NULL,
    extractive     boolean     NOT NULL,
    input_tokens   integer     NOT NULL DEFAULT 0,
    output_tokens  integer     NOT NULL DEFAULT 0,
    cost_micro_usd bigint      NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (arxiv_id, version, prompt_version),
    FOREIGN KEY (arxiv_id, version) REFERENCES papers (arxiv_id, version)
);

-- Where a long crawl stands, so that it resumes after a crash.
CREATE TABLE crawl_checkpoints (
    name       text        PRIMARY KEY,
    state      jsonb       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
