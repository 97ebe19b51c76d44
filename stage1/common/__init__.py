"""What every phase shares: the config (``defaults.py`` holds every key with its comment), the
command line and its one-line errors, process groups, logging, output-folder checks, and the
one mapping from a config to a student's build arguments (``students.py``). Imports no other
part of ``stage1``."""
