-- Mandate's tables, version 1, for CockroachDB: the PostgreSQL migration
-- without COLLATE "C" (CockroachDB compares strings bytewise already).
--
-- Relationships are multi-version: mandate_relationships holds the current
-- version of every key, mandate_relationship_history the versions that were
-- replaced or deleted, each with the revision that ended it. A read at
-- revision R takes current rows created at or before R plus history rows
-- alive at R; the change stream is derived from the created/deleted
-- revisions. Strings compare bytewise, like Go's; the key index orders by each part with its separator
-- appended, which is exactly the order of the text form
-- type:id#relation@type:id[#relation] that reads promise.

CREATE TABLE mandate_metadata (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    store_id   uuid NOT NULL DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO mandate_metadata DEFAULT VALUES;

-- One row: every write increments head while holding this row's lock, so
-- revisions are assigned in commit order without gaps.
CREATE TABLE mandate_state (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    head            bigint NOT NULL,
    schema_revision bigint NOT NULL,
    oldest          bigint NOT NULL
);
INSERT INTO mandate_state (head, schema_revision, oldest) VALUES (0, 0, 0);

-- One row per write, even one that changed nothing; changes counts the
-- relationship rows it wrote or ended, so that Watch can size its reads.
CREATE TABLE mandate_revisions (
    revision     bigint PRIMARY KEY,
    committed_at timestamptz NOT NULL,
    changes      integer NOT NULL
);
CREATE INDEX mandate_revisions_committed_at ON mandate_revisions (committed_at);

CREATE TABLE mandate_schemas (
    revision   bigint PRIMARY KEY,
    definition text NOT NULL
);

CREATE TABLE mandate_relationships (
    resource_type    text NOT NULL,
    resource_id      text NOT NULL,
    relation         text NOT NULL,
    subject_type     text NOT NULL,
    subject_id       text NOT NULL,
    subject_relation text NOT NULL, -- '' for the subject itself
    caveat_name      text NOT NULL,             -- '' for none
    caveat_context   jsonb,
    expiration       timestamptz,
    created_rev      bigint NOT NULL
);
CREATE UNIQUE INDEX mandate_relationships_key ON mandate_relationships
    ((resource_type || ':'), (resource_id || '#'), (relation || '@'), (subject_type || ':'), subject_id, subject_relation);
-- No index on the subject: it would halve import speed (measured with
-- BenchmarkImport), and reads that name no resource type are rare; they
-- scan. Add one (CREATE INDEX CONCURRENTLY ... (subject_type, subject_id,
-- subject_relation)) if a workload needs them fast.
CREATE INDEX mandate_relationships_created ON mandate_relationships (created_rev);
CREATE INDEX mandate_relationships_expiration ON mandate_relationships (expiration) WHERE expiration IS NOT NULL;

CREATE TABLE mandate_relationship_history (
    resource_type    text NOT NULL,
    resource_id      text NOT NULL,
    relation         text NOT NULL,
    subject_type     text NOT NULL,
    subject_id       text NOT NULL,
    subject_relation text NOT NULL,
    caveat_name      text NOT NULL,
    caveat_context   jsonb,
    expiration       timestamptz,
    created_rev      bigint NOT NULL,
    deleted_rev      bigint NOT NULL
);
CREATE INDEX mandate_relationship_history_key ON mandate_relationship_history
    ((resource_type || ':'), (resource_id || '#'), (relation || '@'), (subject_type || ':'), subject_id, subject_relation, created_rev);
CREATE INDEX mandate_relationship_history_created ON mandate_relationship_history (created_rev);
CREATE INDEX mandate_relationship_history_deleted ON mandate_relationship_history (deleted_rev);
