-- Schema `streaming`: raw aggregates, written only by the stream consumer, one Postgres
-- transaction per micro-batch together with the Kafka offsets that produced them.
CREATE SCHEMA IF NOT EXISTS streaming;
CREATE SCHEMA IF NOT EXISTS analytics;

-- Exactly the table of the reference README (the demo this project rebuilds: docs/architecture.md), plus updated_at.
-- created_at / updated_at are the first / latest occurred_at of the pair's events.
CREATE TABLE IF NOT EXISTS streaming.user_events (
    user_id     bigint       NOT NULL,
    event_type  varchar(50)  NOT NULL,
    event_count bigint       NOT NULL,
    created_at  timestamptz  NOT NULL,
    updated_at  timestamptz  NOT NULL,
    PRIMARY KEY (user_id, event_type)
);

-- The real-time timeline: events and revenue per minute (of occurred_at) and event type.
CREATE TABLE IF NOT EXISTS streaming.event_minutes (
    minute      timestamptz    NOT NULL,
    event_type  varchar(50)    NOT NULL,
    event_count bigint         NOT NULL,
    revenue     numeric(38, 2) NOT NULL,
    PRIMARY KEY (minute, event_type)
);

-- Sessionization: one row per session of a user. A session id is the client's, and a producer
-- may reuse one for several users: each user gets a session of their own, so a session's user
-- never changes (the engagement mart's incremental build relies on that).
CREATE TABLE IF NOT EXISTS streaming.sessions (
    session_id     uuid           NOT NULL,
    user_id        bigint         NOT NULL,
    first_event_at timestamptz    NOT NULL,
    last_event_at  timestamptz    NOT NULL,
    event_count    bigint         NOT NULL,
    purchase_count bigint         NOT NULL,
    revenue        numeric(38, 2) NOT NULL,
    PRIMARY KEY (session_id, user_id)
);
CREATE INDEX IF NOT EXISTS sessions_user_id_idx ON streaming.sessions (user_id);
CREATE INDEX IF NOT EXISTS sessions_last_event_at_idx ON streaming.sessions (last_event_at);
-- The transaction that last wrote the row, as xmin but 64 bits wide and indexed: the marts read
-- the sessions written since their last build with an index range scan instead of a scan of the
-- whole history (dbt_project/macros/change_tracking.sql). Every writer of the table sets it: the
-- default on insert, `written_xid = pg_current_xact_id()` in the consumer's upsert. Added after
-- the first release: existing rows get the migration's id, and the next build reads them once.
ALTER TABLE streaming.sessions ADD COLUMN IF NOT EXISTS written_xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX IF NOT EXISTS sessions_written_xid_idx ON streaming.sessions (written_xid);

-- The profile dimension from the compacted user_profiles topic; newest updated_at wins.
CREATE TABLE IF NOT EXISTS streaming.users (
    user_id     bigint       PRIMARY KEY,
    name        text         NOT NULL,
    email       text         NOT NULL,
    country     char(2)      NOT NULL,
    signup_date date         NOT NULL,
    plan        varchar(50)  NOT NULL,
    updated_at  timestamptz  NOT NULL
);

-- Every message that breaks the contract, with why; (topic, partition, offset) is unique,
-- so a replayed batch can never file the same message twice.
CREATE TABLE IF NOT EXISTS streaming.dead_letter_events (
    id          bigserial    PRIMARY KEY,
    topic       text         NOT NULL,
    "partition" integer      NOT NULL,
    "offset"    bigint       NOT NULL,
    message_key text,
    raw_value   text,
    error       text         NOT NULL,
    received_at timestamptz  NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (topic, "partition", "offset")
);
-- Added after the first release (ADD COLUMN IF NOT EXISTS: existing databases get them too).
-- reason: the error's category (common/contract.py Reason); kafka_timestamp: when the broker
-- appended the message (topics with LogAppendTime), what a replay checks its event time against;
-- raw_value_exact: raw_value is the whole message, byte for byte (not cut, no bytes escaped), so
-- `dead-letters replay` can run it through the contract again.
ALTER TABLE streaming.dead_letter_events
    ADD COLUMN IF NOT EXISTS reason          text NOT NULL DEFAULT 'contract',
    ADD COLUMN IF NOT EXISTS kafka_timestamp timestamptz,
    ADD COLUMN IF NOT EXISTS raw_value_exact boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS dead_letter_events_received_at_idx ON streaming.dead_letter_events (received_at);

-- The event ids counted within the dedup window (CONSUMER_DEDUP_WINDOW_SECONDS): clients retry, so
-- an event the collector sends (Kafka header event-ids: may-repeat) may arrive twice; the batch
-- that first counts it records (user_id, event_id) in the same transaction (logged, as the
-- aggregates: a crash keeps both or neither), and a later copy from the same user within the
-- window is not counted. The key is the pair: another user's event with the same id counts.
-- Generations instead of a DELETE by age: ids go into the current slot's partition; when it is a
-- window old, the consumer empties the other slot (TRUNCATE, a file swap, nothing to vacuum) and
-- makes it current (stream_consumer/store.py rotate_event_ids). A copy is checked against both
-- slots, so an id is remembered for at least one window and at most two: about rate x window to
-- 2 x rate x window rows, one index each, counting the events with that header only.
-- The first release keyed on event_id alone (event_id uuid PRIMARY KEY, seen_at, not partitioned):
-- its ids have no user, so it is dropped here, at upgrade; a retry of an event sent in the last
-- window before the upgrade may then count twice (docs/operations.md).
DO $$
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = to_regclass('streaming.event_ids')) = 'r' THEN
        DROP TABLE streaming.event_ids;
    END IF;
END $$;
CREATE TABLE IF NOT EXISTS streaming.event_ids (
    slot     smallint NOT NULL,
    user_id  bigint   NOT NULL,
    event_id uuid     NOT NULL,
    PRIMARY KEY (user_id, event_id, slot)
) PARTITION BY LIST (slot);
CREATE TABLE IF NOT EXISTS streaming.event_ids_0 PARTITION OF streaming.event_ids FOR VALUES IN (0);
CREATE TABLE IF NOT EXISTS streaming.event_ids_1 PARTITION OF streaming.event_ids FOR VALUES IN (1);
-- Each slot's own number by default: the consumer copies (user_id, event_id) into the current one.
ALTER TABLE streaming.event_ids_0 ALTER COLUMN slot SET DEFAULT 0;
ALTER TABLE streaming.event_ids_1 ALTER COLUMN slot SET DEFAULT 1;
-- Which slot is current, since when. One row.
CREATE TABLE IF NOT EXISTS streaming.event_id_generation (
    one        boolean     PRIMARY KEY DEFAULT true CHECK (one),
    slot       smallint    NOT NULL CHECK (slot IN (0, 1)),
    started_at timestamptz NOT NULL
);
INSERT INTO streaming.event_id_generation (slot, started_at) VALUES (0, clock_timestamp()) ON CONFLICT DO NOTHING;
-- The newest occurred_at of any id in the other slot (NULL: it holds none). A copy of an event is
-- looked up in the other slot only if it is not newer than that: every event that arrives after the
-- rotation, but late ones, skips the look-up. Set at the rotation from event_id_spans. An other
-- slot of ids recorded before this column existed has no bound: 'infinity' looks every copy up
-- until the next rotation.
ALTER TABLE streaming.event_id_generation ADD COLUMN IF NOT EXISTS other_newest timestamptz;
UPDATE streaming.event_id_generation SET other_newest = 'infinity'
WHERE other_newest IS NULL
  AND CASE slot WHEN 0 THEN EXISTS (SELECT FROM streaming.event_ids_1) ELSE EXISTS (SELECT FROM streaming.event_ids_0) END;
-- One row per batch that recorded ids: into which slot, and the newest occurred_at among them.
CREATE TABLE IF NOT EXISTS streaming.event_id_spans (
    slot      smallint    NOT NULL,
    newest_at timestamptz NOT NULL
);

-- Product analytics (docs/architecture.md, "Product analytics"): what the marts of funnels, pages,
-- sources, identity and retention need, and the live "active users now", written in the batch's
-- transaction like the aggregates above.

-- Every counted event, in the order nothing else keeps: funnels need each step's time. Appended,
-- never updated: the consumer COPYs a batch's events in. No index by user (an index entry per event
-- would cost the consumer); written_xid (the batch's transaction, the same value for all its rows)
-- lets the marts read what was appended since their last build, and BRIN on occurred_at lets them
-- read the events around those in time.
CREATE TABLE IF NOT EXISTS streaming.event_log (
    user_id     bigint      NOT NULL,
    occurred_at timestamptz NOT NULL,
    event_type  varchar(50) NOT NULL,
    page        text,
    written_xid xid8        NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX IF NOT EXISTS event_log_written_xid_idx ON streaming.event_log (written_xid);
CREATE INDEX IF NOT EXISTS event_log_occurred_at_brin ON streaming.event_log USING brin (occurred_at);

-- Each user's newest event time: "active users now" counts the rows of the last 5 minutes with an
-- index range scan, whatever the number of users (streaming.active_users_now).
CREATE TABLE IF NOT EXISTS streaming.user_last_seen (
    user_id      bigint      PRIMARY KEY,
    last_seen_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS user_last_seen_last_seen_at_idx ON streaming.user_last_seen (last_seen_at);
CREATE OR REPLACE VIEW streaming.active_users_now AS
SELECT count(*) AS active_users, now() AS as_of
FROM streaming.user_last_seen
WHERE last_seen_at >= now() - interval '5 minutes';

-- Identity: an `identify` event says the anonymous user_id is the known identified_user_id. One
-- row per (anonymous id, known user) pair ever identified, with the pair's latest identify time:
-- the current mapping of an anonymous id is its pair with the latest identified_at (the latest
-- identify wins; ties go to the larger user id). Earlier pairs stay so that a mart can recount
-- every user an anonymous id was counted under before. One level: a known user is not looked up
-- again as an anonymous id.
CREATE TABLE IF NOT EXISTS streaming.identities (
    anonymous_id  bigint      NOT NULL,
    user_id       bigint      NOT NULL,
    identified_at timestamptz NOT NULL,
    written_xid   xid8        NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (anonymous_id, user_id)
);
CREATE INDEX IF NOT EXISTS identities_user_id_idx ON streaming.identities (user_id);
CREATE INDEX IF NOT EXISTS identities_written_xid_idx ON streaming.identities (written_xid);

-- Users deleted ("forget this user": `python -m stream_consumer users delete`, or a tombstone on
-- user_profiles). Their rows are gone from every other streaming table; the marts drop them on the
-- next build; the consumer drops their events appended to Kafka up to deleted_at (a rebuild's
-- replay), and with suppress all their later events too. Survives a rebuild.
CREATE TABLE IF NOT EXISTS streaming.deleted_users (
    user_id    bigint      PRIMARY KEY,
    deleted_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    suppress   boolean     NOT NULL DEFAULT false,
    written_xid xid8       NOT NULL DEFAULT pg_current_xact_id()
);

-- A session's first touch: the landing page, the referrer's host and the utm parameters of its
-- earliest event (NULL where that event had none); a late event earlier than the first replaces them.
ALTER TABLE streaming.sessions
    ADD COLUMN IF NOT EXISTS landing_page  text,
    ADD COLUMN IF NOT EXISTS referrer_host text,
    ADD COLUMN IF NOT EXISTS utm_source    varchar(100),
    ADD COLUMN IF NOT EXISTS utm_medium    varchar(100),
    ADD COLUMN IF NOT EXISTS utm_campaign  varchar(100);
-- daily_active_users counts the sessions that started on a day by an index range.
CREATE INDEX IF NOT EXISTS sessions_first_event_at_idx ON streaming.sessions (first_event_at);

-- Where each partition resumes: written in the same transaction as the aggregates, and only
-- if it still holds the offset the writer started from (the fence against lost partitions).
-- high_watermark is the partition's end offset as the consumer last saw it (for lag).
CREATE TABLE IF NOT EXISTS streaming.consumer_offsets (
    consumer_group text         NOT NULL,
    topic          text         NOT NULL,
    "partition"    integer      NOT NULL,
    next_offset    bigint       NOT NULL,
    high_watermark bigint,
    updated_at     timestamptz  NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (consumer_group, topic, "partition")
);

-- Revenue was numeric(20, 2) before the contract bounded every number: widen it in place. dbt's
-- staging views read these columns, so they go first (dbt recreates them on its next build).
DO $$
DECLARE
    v regclass;
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = 'streaming' AND table_name IN ('event_minutes', 'sessions')
                 AND column_name = 'revenue' AND numeric_precision < 38) THEN
        FOR v IN SELECT DISTINCT r.ev_class::regclass FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
                 WHERE d.refobjid IN ('streaming.event_minutes'::regclass, 'streaming.sessions'::regclass)
                   AND r.ev_class NOT IN ('streaming.event_minutes'::regclass, 'streaming.sessions'::regclass)
        LOOP
            EXECUTE format('DROP VIEW IF EXISTS %s CASCADE', v);
        END LOOP;
        ALTER TABLE streaming.event_minutes ALTER COLUMN revenue TYPE numeric(38, 2);
        ALTER TABLE streaming.sessions ALTER COLUMN revenue TYPE numeric(38, 2);
    END IF;
END $$;

-- Sessions were keyed by session_id alone (a shared id kept the smallest user id): re-key them.
DO $$
BEGIN
    IF (SELECT array_length(conkey, 1) FROM pg_constraint
        WHERE conrelid = 'streaming.sessions'::regclass AND contype = 'p') = 1 THEN
        ALTER TABLE streaming.sessions DROP CONSTRAINT sessions_pkey, ADD PRIMARY KEY (session_id, user_id);
    END IF;
END $$;

-- Autovacuum for the upserted tables (benchmarks/soak.py measures their size and dead rows).
-- Each batch updates the same rows again: a user's counts, the current minute, the open sessions,
-- every partition's offset. Dead row versions pile up at the rate of batches, not of table growth,
-- while Postgres' default waits until 20% of a table is dead: on sessions, millions of rows and
-- growing, that is millions of dead rows between vacuums and a table that keeps swelling. Vacuum
-- after a small absolute number instead. Where no indexed column changes (user_events,
-- event_minutes, consumer_offsets: only counts and timestamps outside their keys), free room in
-- each page (fillfactor) lets an update be HOT: the new version stays in the page, no index entry
-- is written, and the old one is pruned on the next visit without waiting for a vacuum. These take
-- a SHARE UPDATE EXCLUSIVE lock: the consumer keeps writing while they run, on every start.
ALTER TABLE streaming.user_events SET (
    fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.05);
ALTER TABLE streaming.event_minutes SET (
    fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000);
ALTER TABLE streaming.sessions SET (
    autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE streaming.consumer_offsets SET (
    fillfactor = 50, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 200);
-- user_last_seen: each batch moves its users' rows (last_seen_at, an indexed column: no HOT update,
-- so no fillfactor); vacuum after a small absolute number of dead rows, as sessions.
ALTER TABLE streaming.user_last_seen SET (
    autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 5000, autovacuum_analyze_scale_factor = 0.02);
-- event_log is appended only: its BRIN summarizes each page range as it fills (autosummarize)
-- rather than at the next vacuum, which an append-only table gets only at 20% growth: until then the
-- newest ranges, those the marts read, would be read whole by every query on occurred_at.
ALTER INDEX streaming.event_log_occurred_at_brin SET (autosummarize = on);
