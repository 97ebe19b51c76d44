"""Helpers the tests share: import them as ``helpers.<module>`` (``tests/`` is on
``sys.path`` through ``tests/conftest.py``)."""
