"""Suppression lists: the addresses an account does not send to, and why.

``lists``: look-ups (the hot path's one query per message), add, remove, list,
CSV import and export; ``sink``: the ``EventSink`` that turns stored provider
events into suppressions; ``sync``: the providers' own lists read into ours.
"""
