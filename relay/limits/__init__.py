"""Account and credential sending limits, enforced across processes and nodes."""
