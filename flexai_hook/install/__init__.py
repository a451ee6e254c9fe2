"""Building and installing: the C build (cbuild.py, `python -m flexai_hook.install.cbuild`) and the
fast launchers of the per-container-start commands (launchers.py).

May import: nothing else of flexai_hook (setup.py imports cbuild before the package is
installed).
"""
