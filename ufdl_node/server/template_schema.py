"""Migration 5 of the embedded server's database: job templates as the real server keeps them.

UFDL-API.md section 4: the domain as its code, the licence by pk, and one *active*
template per name and version (an import of a name and version that exists
soft-deletes the old one, which its jobs keep). SQLite cannot drop a table's UNIQUE
constraint, so the table is rebuilt; the store migrates with foreign keys off, and the
job_json triggers that read the table are dropped here and remade when the store opens
(``rowjson.keep_job_json`` counts them).
"""

TEMPLATES_AS_THE_REAL_SERVER = """
    DROP TRIGGER IF EXISTS job_json_insert;
    DROP TRIGGER IF EXISTS job_json_update;
    DROP TRIGGER IF EXISTS job_json_output_insert;
    DROP TRIGGER IF EXISTS job_json_output_update;
    DROP TRIGGER IF EXISTS job_json_output_delete;
    DROP TRIGGER IF EXISTS job_json_template;
    CREATE TABLE templates_new (
        pk INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, version INTEGER NOT NULL,
        description TEXT NOT NULL, scope TEXT NOT NULL, domain TEXT,
        licence INTEGER NOT NULL REFERENCES licences(pk),
        workable INTEGER NOT NULL, type TEXT, executor_class TEXT, required_packages TEXT,
        parameters TEXT, creator INTEGER, creation_time TEXT NOT NULL, deletion_time TEXT);
    INSERT INTO templates_new (pk, name, version, description, scope, domain, licence, workable,
        type, executor_class, required_packages, parameters, creator, creation_time, deletion_time)
        SELECT t.pk, t.name, t.version, t.description, t.scope,
            coalesce((SELECT d.code FROM domains d WHERE d.name = t.domain), t.domain),
            coalesce((SELECT l.pk FROM licences l WHERE l.name = t.licence), 1),
            t.workable, t.type, t.executor_class, t.required_packages, t.parameters, t.creator,
            t.creation_time, t.deletion_time FROM templates t;
    DROP TABLE templates;
    ALTER TABLE templates_new RENAME TO templates;
    CREATE UNIQUE INDEX templates_active ON templates (name, version) WHERE deletion_time IS NULL;
"""
