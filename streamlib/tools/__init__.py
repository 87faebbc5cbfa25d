"""Tools that look at a store from outside (docs/guide.md, "Operating"): what it holds
(:mod:`~streamlib.tools.inspection`), its records (:mod:`~streamlib.tools.dump`), whether its
bytes are whole (:mod:`~streamlib.tools.verify`). They open the parts read-only
(:mod:`~streamlib.tools.opening`) and never disturb a node that has the store open: no node
lock, no WAL recovery, append or trim, no metadata change. ``streamlib.cli`` parses the
arguments and prints; these modules return plain data and report progress through a callback.
"""
