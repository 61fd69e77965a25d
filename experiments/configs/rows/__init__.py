"""One config per row of the reproduced tables: `<table>_<row>.py`, each a `get_config()`.

The settings the rows share live in `common.py`; `python -m experiments.reproduce` loads these.
"""
