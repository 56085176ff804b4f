"""The files of a tuning run directory (written by the tuner, read by the report)."""

DATABASE_FILE = "database.jsonl"  # one JSON line per finished evaluation
SETTINGS_FILE = "settings.json"  # the command line's settings, for the report and its reproductions
SPACE_FILE = "space.toml"  # a copy of the search space
RUN_FILE = "run.json"  # what defines the run (hashes, seed, strategy, ...), written when it starts
LOCK_FILE = ".tune.lock"  # flock-ed by the tune using the directory
TEMP_DIR = ".tune-tmp"  # the run's temporary files
