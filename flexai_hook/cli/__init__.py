"""The `flexai` command: its subcommands (commands.py), the status view (status_view.py) and the
demo (demo.py).

May import: anything in flexai_hook; nothing imports cli/.
"""
