-- Records (store.RecordStore), for CockroachDB: the PostgreSQL migration
-- without COLLATE "C" (CockroachDB compares strings bytewise already).
-- Records are durable server state beside relationships,
-- such as capability-token revocations, written at revisions of the same
-- sequence. mandate_records holds the current record of each (kind, id);
-- mandate_record_changes the updates of each revision for Watch, removed
-- with their revision's row when garbage collection drops it.

CREATE TABLE mandate_records (
    kind     text NOT NULL,
    id       text NOT NULL,
    data     bytea NOT NULL,
    revision bigint NOT NULL,
    PRIMARY KEY (kind, id)
);

CREATE TABLE mandate_record_changes (
    revision bigint NOT NULL REFERENCES mandate_revisions (revision) ON DELETE CASCADE,
    seq      integer NOT NULL,
    op       smallint NOT NULL,
    kind     text NOT NULL,
    id       text NOT NULL,
    data     bytea NOT NULL,
    written  bigint NOT NULL, -- the revision that wrote the record (a Delete's is older)
    PRIMARY KEY (revision, seq)
);
