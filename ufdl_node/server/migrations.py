"""The embedded server's SQLite schema, one script per version, applied in order by
``Store._migrate`` (``PRAGMA user_version`` says how many ran). A script that has shipped is
never edited: a change is a new script at the end.
"""

from __future__ import annotations

from .template_schema import TEMPLATES_AS_THE_REAL_SERVER

SCHEMA_MIGRATIONS = [
    """
    CREATE TABLE users (
        pk INTEGER PRIMARY KEY AUTOINCREMENT, username TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL, is_staff INTEGER NOT NULL, creation_time TEXT NOT NULL);
    CREATE TABLE hardware (
        pk INTEGER PRIMARY KEY AUTOINCREMENT, generation TEXT NOT NULL UNIQUE,
        min_cc REAL NOT NULL, max_cc REAL NOT NULL);
    CREATE TABLE licences (pk INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE);
    CREATE TABLE domains (pk INTEGER PRIMARY KEY AUTOINCREMENT, code TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL UNIQUE);
    CREATE TABLE nodes (
        pk INTEGER PRIMARY KEY AUTOINCREMENT, ip TEXT NOT NULL, idx INTEGER NOT NULL,
        cpu_mem INTEGER NOT NULL, gpu_mem INTEGER, driver_version TEXT,
        hardware_generation INTEGER REFERENCES hardware(pk), last_seen TEXT,
        current_job INTEGER, UNIQUE (ip, idx));
    CREATE TABLE templates (
        pk INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, version INTEGER NOT NULL,
        description TEXT NOT NULL, scope TEXT NOT NULL, domain TEXT, licence TEXT NOT NULL,
        workable INTEGER NOT NULL, type TEXT, executor_class TEXT, required_packages TEXT,
        parameters TEXT, creator INTEGER, creation_time TEXT NOT NULL, deletion_time TEXT,
        UNIQUE (name, version));
    CREATE TABLE jobs (
        pk INTEGER PRIMARY KEY AUTOINCREMENT, template INTEGER NOT NULL REFERENCES templates(pk),
        parent INTEGER, start_time TEXT, end_time TEXT, error_reason TEXT,
        input_values TEXT NOT NULL, parameter_values TEXT, node INTEGER,
        description TEXT NOT NULL, is_cancelled INTEGER NOT NULL DEFAULT 0,
        progress REAL NOT NULL DEFAULT 0, notification_override TEXT, creator INTEGER,
        creation_time TEXT NOT NULL, deletion_time TEXT);
    CREATE INDEX jobs_node ON jobs (node);
    CREATE TABLE outputs (
        pk INTEGER PRIMARY KEY AUTOINCREMENT, job INTEGER NOT NULL, name TEXT NOT NULL,
        type TEXT NOT NULL, size INTEGER NOT NULL, creator INTEGER,
        creation_time TEXT NOT NULL, deletion_time TEXT, UNIQUE (job, name, type));
    """,
    # 2: a node belongs to the user who created it (another ordinary user may not act for it)
    """
    ALTER TABLE nodes ADD COLUMN creator INTEGER;
    """,
    # 3: datasets (files stored by file pk, image-classification categories), and the Docker-image
    # and pretrained-model records (UFDL-API.md section 8); CUDA versions as the real server ships them
    """
    CREATE TABLE datasets (
        pk INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, version INTEGER NOT NULL,
        previous_version INTEGER, description TEXT NOT NULL, project INTEGER,
        licence INTEGER REFERENCES licences(pk), is_public INTEGER NOT NULL, domain TEXT NOT NULL,
        tags TEXT NOT NULL, creator INTEGER, creation_time TEXT NOT NULL, deletion_time TEXT,
        UNIQUE (name, version));
    CREATE TABLE dataset_files (
        pk INTEGER PRIMARY KEY AUTOINCREMENT, dataset INTEGER NOT NULL REFERENCES datasets(pk),
        name TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL, creation_time TEXT NOT NULL,
        UNIQUE (dataset, name));
    CREATE TABLE categories (
        pk INTEGER PRIMARY KEY AUTOINCREMENT,
        file INTEGER NOT NULL REFERENCES dataset_files(pk) ON DELETE CASCADE,
        category TEXT NOT NULL, UNIQUE (file, category));
    CREATE TABLE cuda_versions (
        pk INTEGER PRIMARY KEY AUTOINCREMENT, version TEXT NOT NULL UNIQUE,
        full_version TEXT NOT NULL, min_driver_version TEXT NOT NULL);
    INSERT INTO cuda_versions (version, full_version, min_driver_version) VALUES
        ('12.1', '12.1.0', '530.30.02'), ('12.0', '12.0.0', '525.60.13'),
        ('11.8', '11.8.0', '520.61.05'), ('11.7', '11.7.0', '515.65.01'),
        ('11.6', '11.6.0', '510.47.03'), ('11.5', '11.5.0', '495.29.05'),
        ('11.4', '11.4.0', '470.57.02'), ('11.3', '11.3.0', '465.19.01'),
        ('11.2', '11.2.0', '460.27.03'), ('11.1', '11.1.0', '455.23.05'),
        ('11.0', '11.0.171', '450.36.06'), ('10.2', '10.2.89', '440.33'),
        ('10.1', '10.1.105', '418.39'), ('10.0', '10.0.130', '410.48'), ('9.2', '9.2.88', '396.26'),
        ('9.1', '9.1.85', '390.46'), ('9.0', '9.0.76', '384.81'), ('8.0', '8.0.61 GA2', '375.26'),
        ('7.5', '7.5.16', '352.31'), ('7.0', '7.0.28', '346.46'), ('0.0', '0.0', '0.0');
    CREATE TABLE frameworks (
        pk INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, version TEXT NOT NULL,
        UNIQUE (name, version));
    CREATE TABLE docker_images (
        pk INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, version TEXT NOT NULL,
        url TEXT NOT NULL, registry_url TEXT NOT NULL, registry_username TEXT,
        registry_password TEXT, cuda_version INTEGER NOT NULL REFERENCES cuda_versions(pk),
        framework INTEGER NOT NULL REFERENCES frameworks(pk), domain TEXT NOT NULL,
        tasks TEXT NOT NULL, min_hardware_generation INTEGER REFERENCES hardware(pk),
        cpu INTEGER NOT NULL, licence TEXT NOT NULL, UNIQUE (name, version, cuda_version));
    CREATE TABLE pretrained_models (
        pk INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, description TEXT NOT NULL,
        url TEXT NOT NULL, metadata TEXT NOT NULL, framework INTEGER NOT NULL REFERENCES frameworks(pk),
        domain TEXT NOT NULL, licence TEXT NOT NULL, creator INTEGER, creation_time TEXT NOT NULL,
        deletion_time TEXT, UNIQUE (name, framework));
    """,
    # 4: what the real server's domain apps keep per file (object-detection file types and
    # annotations, speech transcriptions, file metadata), and a team and project to make
    # datasets in. A dataset's domain stays a code ('' for the core create's domain-less one).
    """
    ALTER TABLE dataset_files ADD COLUMN metadata TEXT NOT NULL DEFAULT '';
    CREATE TABLE od_files (
        file INTEGER PRIMARY KEY REFERENCES dataset_files(pk) ON DELETE CASCADE,
        format TEXT NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL,
        annotations TEXT NOT NULL DEFAULT '[]');
    CREATE TABLE transcriptions (
        file INTEGER PRIMARY KEY REFERENCES dataset_files(pk) ON DELETE CASCADE,
        transcription TEXT NOT NULL);
    CREATE TABLE teams (pk INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
        creator INTEGER, creation_time TEXT NOT NULL, deletion_time TEXT);
    CREATE TABLE projects (pk INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL,
        team INTEGER NOT NULL REFERENCES teams(pk), creator INTEGER, creation_time TEXT NOT NULL,
        deletion_time TEXT, UNIQUE (name, team));
    INSERT INTO teams (name, creation_time)
        VALUES ('default', strftime('%Y-%m-%dT%H:%M:%f000+00:00', 'now'));
    INSERT INTO projects (name, team, creation_time)
        VALUES ('default', 1, strftime('%Y-%m-%dT%H:%M:%f000+00:00', 'now'));
    UPDATE datasets SET project = coalesce(project, 1), previous_version = coalesce(previous_version, -1);
    """,
    TEMPLATES_AS_THE_REAL_SERVER,  # 5: see template_schema.py
    # 6: a video's length in seconds (the real server's Annotations.video_length): a file type
    # with a length makes a video's container, whose annotations each carry their `time`.
    """
    ALTER TABLE od_files ADD COLUMN length REAL;
    """,
]
